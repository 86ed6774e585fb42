"""A trained pipeline's quality and latency by how its encoders run: as saved (OpenVINO exports) vs torch.

The same saved pipeline (the same adapters, the same BM25 index, the same depths) is evaluated four ways on
the evaluated split: as saved; as saved with each call's batches run one after another (a query's reranker pairs
as one batch on every core, not a batch per core at once); with the reranker on torch at its automatic precision;
and all on torch in float32 (the bi-encoder's document index encoded again by torch) — the reference the exports
are compared with. Per variant: nDCG@10 over every query, latency one query at a time (p50, p95, per stage) on the same
queries.
"""

from __future__ import annotations

import contextlib
import statistics
import sys

import numpy as np

from retrieval.cpu import cpu_facts
from retrieval.data import load_dataset
from retrieval.evaluation import evaluate
from retrieval.latency import measure_latency, measure_latency_alternating
from retrieval.pipeline.folder import load_pipeline
from retrieval.stages.dense import Dense, document_index
from retrieval.util import write_json

from .measure import one_batch_at_a_time
from .report import md_table


def _variant(label: str, pipeline, ds, latency_queries: int, latency=None) -> dict:
    """A variant's row: nDCG@10 over every query, and latency one query at a time (``latency``: measured already)."""
    print(f"{label}: evaluating {len(ds.queries)} queries" + ("" if latency else f", then {latency_queries} one at a "
                                                                                 "time"), file=sys.stderr)
    ranking = pipeline.search(ds.queries)
    quality = evaluate(ranking, ds.qrels, ["nDCG@10", "R@100"]).aggregate
    per_stage, total = latency or measure_latency(pipeline, ds.queries, latency_queries)
    ms = np.asarray(total) * 1000
    return {"variant": label, "nDCG@10": quality["nDCG@10"], "R@100": quality["R@100"],
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "stage_p50_ms": {name: 1000 * statistics.median(t) for name, t in per_stage.items() if t},
            "inference": {s.name: _inference(s) for s in pipeline.stages}}


def _inference(stage) -> str:
    model = getattr(stage, "encoder", None) or getattr(stage, "reranker", None)
    if model is None:
        return "-"
    precision = getattr(model, "precision", None)
    return model.inference + (f" ({precision})" if model.inference == "torch" and precision else "")


def main(args) -> int:
    pipeline, corpus, _ = load_pipeline(args.pipeline, threads=args.threads)
    ds = load_dataset(args.dataset, args.split)
    names = [s.name for s in pipeline.stages]
    dense = next((s for s in pipeline.stages if isinstance(s, Dense)), None)
    rerank = next((s for s in pipeline.stages if hasattr(s, "reranker")), None)
    export = rerank.reranker.export_of("pairs") if rerank is not None else None
    if export is None:
        rows = [_variant("as saved", pipeline, ds, args.latency_queries)]
    else:  # the peer: a query's pairs as one batch on every core, not a batch on each core at once; the two take
        # turns query by query, so the machine's drift between them cannot pass for a speed-up
        saved, peer = measure_latency_alternating(pipeline, ds.queries, args.latency_queries,
                                                  [contextlib.nullcontext, lambda: one_batch_at_a_time(export)])
        rows = [_variant("as saved", pipeline, ds, args.latency_queries, saved)]
        with one_batch_at_a_time(export):
            rows.append(_variant("as saved, one batch at a time", pipeline, ds, args.latency_queries, peer))
    if rerank is not None and rerank.reranker.inference != "torch":
        rerank.reranker.use_torch()
        rows.append(_variant("reranker on torch (auto precision)", pipeline, ds, args.latency_queries))
    if dense is not None:
        dense.encoder.use_torch()
        index, _, _ = document_index(dense.encoder, corpus, factory=dense.index.factory)
        stages = [Dense(dense.encoder, index, mode=dense.mode, k=dense.k, fusion=dense.fusion,
                        neighbours=dense.neighbours, name=dense.name, base_ensemble=dense.base_ensemble) if s is dense else s for s in pipeline.stages]
        pipeline = type(pipeline)(stages, name=pipeline.name)
    if rerank is not None:
        rerank.reranker.use_torch()
        rerank.reranker.precision = "float32"
    rows.append(_variant("all torch, float32 (reference)", pipeline, ds, args.latency_queries))
    ref = rows[-1]
    for r in rows:
        r["nDCG@10 - reference"] = r["nDCG@10"] - ref["nDCG@10"]
        r["reference p50 / p50"] = ref["p50_ms"] / r["p50_ms"]
    table = md_table(["variant", *[f"{n} runs as" for n in names], "nDCG@10", "vs float32", "p50 ms", "p95 ms",
                      *[f"{n} p50 ms" for n in names], "float32 p50 / p50"],
                     [[r["variant"], *[r["inference"][n] for n in names], f"{r['nDCG@10']:.4f}",
                       f"{r['nDCG@10 - reference']:+.4f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}",
                       *[f"{r['stage_p50_ms'].get(n, 0):.1f}" for n in names], f"{r['reference p50 / p50']:.2f}"]
                      for r in rows])
    text = (f"{args.pipeline} on {args.dataset.name} {args.split} ({len(ds.queries)} queries; latency: "
            f"{args.latency_queries} one at a time, same queries for every variant; CPU: {cpu_facts()})\n\n{table}")
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    write_json(args.output / "speed_inference.json", {"pipeline": str(args.pipeline), "dataset": str(args.dataset),
                                                      "split": args.split, "cpu": cpu_facts(), "rows": rows})
    (args.output / "speed_inference.md").write_text(text + "\n", encoding="utf-8")
    return 0
