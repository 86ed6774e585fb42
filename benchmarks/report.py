"""Reports for people: a markdown table per condition (``report.md``), the side-by-side summary table, and the
plots of each dataset (recall and latency by stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from retrieval.card import start_text

from .plots import stage_latency, stage_quality

TABLE_METRICS = ("nDCG@10", "R@100", "R@1000", "RR@10", "AP")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def condition_report(r: dict) -> str:
    parts = [
        f"# {r['pipeline']} on {r['dataset']} ({r['split']}, {r['queries']} queries)",
        "",
        r.get("description", ""),
        "",
        md_table(list(r["metrics"]), [list(r["metrics"].values())]),
        "",
        "## Stages",
        "",
        md_table(
            ["stage", "k", "nDCG@10", "R@k", "latency p50 ms", "latency p95 ms"],
            [[s["name"], s["k"], s["metrics"]["nDCG@10"], s["metrics"][f"R@{s['k']}"],
              s["latency_ms"]["p50"], s["latency_ms"]["p95"]] for s in r["stages"]],
        ),
        "",
        f"Index build: {r['index_seconds']:.1f} s{' (reused from cache)' if r['index_reused'] else ''}; "
        f"batch search: {r['batch_seconds']:.2f} s ({_fmt(r['qps'])} queries/s); "
        f"single-query latency over {r['latency_queries']} queries: p50 {r['latency_ms']['p50']:.1f} ms, "
        f"p95 {r['latency_ms']['p95']:.1f} ms.",
        "",
        f"Settings: `{r['settings']}`",
    ]
    if r.get("index_bytes") is not None or r.get("train_seconds") is not None:
        parts += ["", f"Index size: {(r.get('index_bytes') or 0) / 2**20:.1f} MB; training time: "
                      f"{_fmt(r.get('train_seconds'))} s" + (" (adapters cached: the time they took when trained)"
                                                             if r.get("train_seconds") else "") + "."]
    if r.get("significance"):
        g = r["significance"]
        parts += ["", f"Against `{g['baseline']}` on the same {g['queries']} queries: {g['metric']} {g['delta']:+.4f}, "
                      f"paired t-test t={g['t']:.2f}, p={g['p_value']:.3g} ({g['wins']} queries better, "
                      f"{g['losses']} worse); {g['correction'].capitalize()}-corrected over the {g['tests']} "
                      f"conditions tested against it: p={g['p_corrected']:.3g}."]
    if r.get("dataset_plots"):
        parts += ["", *[f"![{Path(p).stem}]({p})" for p in r["dataset_plots"]]]
    if r.get("fit"):
        f = r["fit"]
        best = f.get("best") or {}
        parts += ["", f"Fitted on split `{f['split']}` ({f['queries']} queries): chose k1={f['k1']}, b={f['b']} "
                      f"({f['metric']} {f['score']:.4f} on that split; start values {f['default_score']:.4f}; "
                      f"grid best k1={best.get('k1')}, b={best.get('b')} at {best.get(f['metric'], 0):.4f}, "
                      f"paired t-test p={best.get('p_value', 1):.3f}, kept only if p < {f['alpha']}).",
                  "", "![fit grid](fit_grid.png)"]
    if r.get("train"):
        t = r["train"]
        parts += ["", f"## Training ({t['settings']['mode']} LoRA, split `{t.get('split')}`)", "",
                  f"{t['train_queries']} training queries, {t['val_queries']} held out for validation; "
                  f"trainable share {t['trainable_share']:.2%}; {t['seconds']:.0f} s; peak memory "
                  f"{t['peak_memory_mb']:.0f} MB (process peak RSS); best epoch {t['best_epoch']} (validation nDCG@10 "
                  f"{start_text(t['start_val'])} -> {t['best_val']:.4f}).", "",
                  md_table(["epoch", "loss", "val nDCG@10", "seconds"],
                            [[h["epoch"], h["loss"], h["val_nDCG@10"], h["seconds"]] for h in t["history"]])]
    for s in r["stages"]:
        for part, m in s.get("parts", {}).items():
            parts += ["", f"Stage `{s['name']}` {part} (before fusion): nDCG@10 {m['nDCG@10']:.4f}, RR@10 {m['RR@10']:.4f}."]
    if r.get("epoch_curve"):
        parts += ["", f"## {r['split']} nDCG@10 after each training epoch (a report only: the kept epoch was chosen "
                      "on validation, the depth and weight on held-out training queries; each epoch's weights scored by "
                      f"{r['epoch_curve'][0].get('inference', 'torch')}, the reported figures by "
                      f"{r.get('settings', {}).get('inference', 'torch')})", "",
                  md_table(["epoch", "validation nDCG@10", f"{r['split']} nDCG@10 reranker alone", f"{r['split']} nDCG@10 fused"],
                            [[c["epoch"], c["val_nDCG@10"], c["nDCG@10 alone"], c["nDCG@10 fused"]] for c in r["epoch_curve"]])]
    if r.get("fusion"):
        f = r["fusion"]
        names = "(BM25, reranker)" if "depth" in f else "(BM25, dense)"
        parts += ["", f"Fusion: {f['method']} ({f['norm']}), weights {f['weights']} {names}, "
                      f"chosen on {f['fitted_on']}."]
        if f.get("depths"):
            parts += ["", md_table(["depth", "best weight", "nDCG@10 fused", "nDCG@10 reranker alone"],
                                    [[d["depth"], d["weight"], d["nDCG@10"], d["nDCG@10 alone"]] for d in f["depths"]]),
                      "", f"(on the held-out training queries; depth {f['depth']} chosen)"]
        if f.get("budget"):
            b = f["budget"]
            timed = ", ".join(f"depth {d}: {ms:g} ms" for d, ms in b["p50_ms"].items())
            parts += ["", f"Latency budget {b['budget_ms']:g} ms a query (median of {b['queries']} held-out training "
                          f"queries one at a time, while building): {timed}"
                          + ("" if b["met"] else "; no depth fits, the shallowest was used") + "."]
    return "\n".join(parts) + "\n"


def summary_table(records: Sequence[dict]) -> str:
    headers = ["dataset", "split", "pipeline", *TABLE_METRICS, "p50 ms", "p95 ms", "q/s", "index MB", "train s",
               "vs baseline"]
    rows = []
    for r in records:
        sig = r.get("significance")
        vs = (f"{sig['delta']:+.4f} (p={sig['p_value']:.3g}, {sig['correction']} {sig['p_corrected']:.3g})" if sig
              else ("baseline" if r.get("is_baseline") else "-"))
        rows.append([r["dataset"], r["split"], r["pipeline"], *[r["metrics"].get(m) for m in TABLE_METRICS],
                     r["latency_ms"]["p50"], r["latency_ms"]["p95"], r["qps"],
                     r["index_bytes"] / 2**20 if r.get("index_bytes") is not None else None,
                     r.get("train_seconds"), vs])
    return md_table(headers, rows)


def time_table(records: Sequence[dict]) -> str:
    """Where each condition's wall time went (``wall_seconds``), and the run's sum: what to cut to make it faster."""
    rows = [[r["dataset"], r["pipeline"], *(r["wall_seconds"][k] for k in ("build", "latency", "batch", "total"))]
            for r in records if r.get("wall_seconds")]
    if not rows:
        return ""
    total = sum(row[-1] for row in rows)
    rows.append(["all", "", *(sum(row[i] for row in rows) for i in (2, 3, 4)), total])
    return md_table(["dataset", "condition", "build s (training, indexing, exports)", "latency s", "batch s", "total s"],
                    [[*row[:2], *(f"{v:.1f}" for v in row[2:])] for row in rows])


def dataset_plots(records: list[dict], out_dir: Path) -> list[str]:
    name, split = records[0]["dataset"], records[0]["split"]
    return [stage_quality(records, out_dir / "stage_quality.png", f"{name} ({split}): quality after each stage").name,
            stage_latency(records, out_dir / "stage_latency.png", f"{name} ({split}): latency of each stage").name]
