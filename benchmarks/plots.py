"""PNG plots for benchmark reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, ax, path: str | Path, title: str) -> Path:
    """Title, tight layout, write the PNG, free the figure."""
    plt = pyplot()
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


def stage_recall(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Recall at each stage's cutoff (R@k, k = the stage's depth), one line per condition."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for r in records:
        xs = list(range(len(r["stages"])))
        ys = [s["metrics"].get(f"R@{s['k']}", float("nan")) for s in r["stages"]]
        ax.plot(xs, ys, marker="o", label=r["pipeline"])
        for x, y, s in zip(xs, ys, r["stages"]):
            ax.annotate(f"{s['name']}@{s['k']}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("stage (in pipeline order)")
    ax.set_ylabel("recall at the stage's cutoff (R@k)")
    ax.set_xticks(range(max(len(r["stages"]) for r in records)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save(fig, ax, path, title or "Recall at each stage's cutoff")


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
