"""PNG plots for benchmark reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, ax, path: str | Path, title: str) -> Path:
    """Title (the axes', or the figure's when ``ax`` is None: several panels), tight layout, write the PNG, free
    the figure."""
    plt = pyplot()
    if ax is None:
        fig.suptitle(title)
    else:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fit_heatmap(fit: dict, path: str | Path, title: str = "") -> Path:
    """Heat map of a BM25 fit grid (k1 x b -> metric), marking the start and the chosen setting."""
    plt = pyplot()
    metric = fit["metric"]
    k1s = sorted({r["k1"] for r in fit["grid"]})
    bs = sorted({r["b"] for r in fit["grid"]})
    values = {(r["k1"], r["b"]): r[metric] for r in fit["grid"]}
    import numpy as np

    grid = np.full((len(k1s), len(bs)), np.nan)
    for (k1, b), v in values.items():
        grid[k1s.index(k1), bs.index(b)] = v
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(bs), 1.0 + 0.6 * len(k1s)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(bs)), [f"{b:g}" for b in bs])
    ax.set_yticks(range(len(k1s)), [f"{k:g}" for k in k1s])
    ax.set_xlabel("b")
    ax.set_ylabel("k1")
    for i in range(len(k1s)):
        for j in range(len(bs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7, color="white")
    best = fit.get("best") or {}
    if best:
        ax.scatter([bs.index(best["b"])], [k1s.index(best["k1"])], s=260, facecolors="none", edgecolors="red",
                   label=f"best on train (p={best.get('p_value', 1):.2f})")
    ax.scatter([bs.index(fit["b"])], [k1s.index(fit["k1"])], marker="x", s=120, c="orange", label="chosen")
    ax.legend(loc="upper left", bbox_to_anchor=(1.25, 1.0), fontsize=8)
    fig.colorbar(im, ax=ax, label=f"{metric} on {fit.get('split', 'train')}")
    return save(fig, ax, path, title or f"BM25 fit: {metric} by k1 and b")


STAGE_MEASURES = ("nDCG@10", "R@100")  # the same cutoffs for every stage, so the stages compare on one axis


def stage_quality(records: list[dict], path: str | Path, title: str = "") -> Path:
    """What each stage's ranking is worth: one row per condition, one dot per stage (in pipeline order, joined
    by a line) on ``STAGE_MEASURES`` — nDCG@10 (the head of the ranking) and R@100 (what the candidates hold),
    each at the same cutoff for every stage, so a reranker that reorders the top 30 is not drawn as losing recall."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(STAGE_MEASURES), figsize=(9.5, 1.1 + 0.42 * len(records)), sharey=True)
    colours: dict[str, str] = {}
    for ax, measure in zip(axes, STAGE_MEASURES):
        for i, r in enumerate(records):
            xs = [s["metrics"].get(measure, float("nan")) for s in r["stages"]]
            ax.plot(xs, [i] * len(xs), color="0.6", linewidth=1, zorder=1)
            for j, (x, s) in enumerate(zip(xs, r["stages"])):
                c = colours.setdefault(s["name"], f"C{len(colours)}")
                ax.scatter([x], [i], color=c, s=36 if j < len(xs) - 1 else 70, zorder=2, edgecolors="black",
                           linewidths=0.5 if j < len(xs) - 1 else 1.2)
            ax.text(xs[-1], i - 0.28, f"{xs[-1]:.3f}", ha="center", fontsize=7)
        ax.set_xlabel(f"{measure} of each stage's ranking")
        ax.grid(alpha=0.3, axis="x")
        ax.margins(x=0.08)
    axes[0].set_yticks(range(len(records)), [r["pipeline"] for r in records])
    axes[0].set_ylim(len(records) - 0.5, -0.7)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, markeredgecolor="black", label=n)
               for n, c in colours.items()]
    axes[-1].legend(handles=handles, title="stage (large dot: the last)", fontsize=8, title_fontsize=8,
                    loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save(fig, None, path, title or "Quality after each stage")


def stage_latency(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Single-query latency (p50) of each stage, stacked per condition, with the p95 of the whole query."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.45 * len(records)))
    colours = {}
    for i, r in enumerate(records):
        left = 0.0
        for s in r["stages"]:
            c = colours.setdefault(s["name"], f"C{len(colours)}")
            width = s["latency_ms"]["p50"]
            ax.barh(i, width, left=left, color=c, label=s["name"] if s["name"] not in ax.get_legend_handles_labels()[1] else None)
            left += width
        ax.plot([r["latency_ms"]["p95"]], [i], marker="|", markersize=14, color="black")
        ax.text(left, i, f" {r['latency_ms']['p50']:.0f} ms", va="center", fontsize=7)
    ax.set_yticks(range(len(records)), [r["pipeline"] for r in records])
    ax.invert_yaxis()
    ax.set_xlabel("latency per query, ms (bars: each stage's p50; |: whole query p95)")
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, ax, path, title or "Latency of each stage")
