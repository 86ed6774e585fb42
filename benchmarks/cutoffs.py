"""Cutoff tuning: each stage's depth chosen for the best nDCG@10 that fits a per-query latency budget.

For a saved pipeline BM25 >> Dense >> Rerank, every combination of BM25 depth (the candidates the dense
stage scores) and rerank depth (0 = no reranker) is evaluated on *tuning* queries — by default the training
queries the pipeline held out of its adapters' training, never the evaluated split. The reranker's scores
are memoised by (query, document), so each pair is scored once however many combinations contain it.

Latency is measured, not assumed: each stage is timed one query at a time at each of its depths, and a
combination's latency is the sum of its stages' median times. The chosen combination is then run on the
evaluated split (quality, and latency measured end to end). Output: a table (nDCG@10 vs latency, the
Pareto front marked), ``cutoffs.json`` and ``cutoffs.png``.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from retrieval.data import load_dataset
from retrieval.evaluation import evaluate
from retrieval.latency import measure_latency
from retrieval.pipeline.folder import load_pipeline
from retrieval.stage import Pipeline
from retrieval.types import Qrels, Queries
from retrieval.util import write_json

from .plots import pyplot, save
from .report import md_table


class _Memo:
    """A reranker wrapper that scores each (query, document) pair once."""

    def __init__(self, reranker):
        self.reranker, self.cache, self.scored = reranker, {}, 0

    def score(self, queries, docs):
        todo = [(q, d) for q, d in dict.fromkeys(zip(queries, docs)) if (q, d) not in self.cache]
        if todo:
            values = self.reranker.score([q for q, _ in todo], [d for _, d in todo])
            self.cache.update(zip(todo, np.asarray(values, dtype=np.float64).tolist()))
            self.scored += len(todo)
        return np.array([self.cache[(q, d)] for q, d in zip(queries, docs)])


def _configure(pipe: Pipeline, bm25_k: int, depth: int) -> Pipeline:
    bm25, dense, rerank = pipe.stages
    bm25.k = bm25_k
    if depth == 0:
        return Pipeline([bm25, dense])
    rerank.k = depth
    return Pipeline([bm25, dense, rerank])


def _median_ms(fn, qids: list[str]) -> float:
    times = []
    for q in qids:
        t0 = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def stage_latencies(pipe: Pipeline, queries: Queries, bm25_ks: Sequence[int], depths: Sequence[int],
                    n: int = 20, seed: int = 0) -> dict:
    """Median single-query milliseconds: BM25 at each depth, the dense stage given that many candidates,
    the reranker at each depth."""
    bm25, dense, rerank = pipe.stages
    qids = list(queries)
    if n < len(qids):
        rng = np.random.default_rng(seed)
        qids = [qids[i] for i in sorted(rng.choice(len(qids), size=n, replace=False))]
    one = {q: Queries({q: queries[q]}) for q in qids}
    pipe.search(one[qids[0]])  # warm-up
    out: dict = {"bm25": {}, "dense": {}, "rerank": {0: 0.0}, "queries": len(qids)}
    for k in tqdm(bm25_ks, desc="latency: bm25 + dense", leave=False):
        out["bm25"][k] = _median_ms(lambda q: bm25.search(one[q], k=k), qids)
        first = {q: bm25.search(one[q], k=k) for q in qids}
        out["dense"][k] = _median_ms(lambda q: dense.search(one[q], first[q]), qids)
    top = {q: dense.search(one[q], bm25.search(one[q], k=max(bm25_ks))) for q in qids}
    for d in tqdm([d for d in depths if d > 0], desc="latency: rerank", leave=False):
        out["rerank"][d] = _median_ms(lambda q: rerank.search(one[q], top[q], k=d), qids)
    return out


def tune(pipe: Pipeline, queries: Queries, qrels: Qrels, budget_ms: float, bm25_ks: Sequence[int] = (100, 300, 1000),
         depths: Sequence[int] = (0, 5, 10, 20, 30, 50), latency_queries: int = 20, metric: str = "nDCG@10") -> dict:
    """Grid of (BM25 depth, rerank depth) on ``queries``; the best ``metric`` whose estimated latency fits."""
    names = [s.name for s in pipe.stages]
    if len(pipe.stages) != 3 or type(pipe.stages[0]).__name__ != "BM25" or type(pipe.stages[2]).__name__ != "Rerank":
        raise ValueError(f"cutoff tuning takes a BM25 >> Dense >> Rerank pipeline, got {names}")
    if budget_ms <= 0:
        raise ValueError(f"the latency budget must be positive, got {budget_ms} ms")
    bm25, dense, rerank = pipe.stages
    saved = (bm25.k, rerank.k, rerank.reranker)
    lat = stage_latencies(pipe, queries, bm25_ks, depths, latency_queries)
    rows = []
    try:
        rerank.reranker = _Memo(saved[2])
        for k, d in tqdm(list(itertools.product(bm25_ks, depths)), desc="cutoff grid", unit="setting"):
            ranking = _configure(pipe, k, d).search(queries)
            score = evaluate(ranking, qrels, [metric]).aggregate[metric]
            rows.append({"bm25_k": k, "rerank_k": d, metric: score,
                         "latency_ms": lat["bm25"][k] + lat["dense"][k] + lat["rerank"][d]})
        scored = rerank.reranker.scored
    finally:
        bm25.k, rerank.k, rerank.reranker = saved
    front, best_so_far = [], -1.0
    for r in sorted(rows, key=lambda r: (r["latency_ms"], -r[metric])):
        if r[metric] > best_so_far + 1e-12:
            front.append(r)
            best_so_far = r[metric]
    for r in rows:
        r["pareto"] = r in front
    fitting = [r for r in rows if r["latency_ms"] <= budget_ms]
    chosen = max(fitting, key=lambda r: (r[metric], -r["latency_ms"])) if fitting else None
    return {"budget_ms": budget_ms, "metric": metric, "tuning_queries": len(queries), "grid": rows,
            "chosen": chosen, "stage_latency_ms": lat, "pairs_scored": scored}


def plot(result: dict, path: str | Path, title: str = "") -> Path:
    plt = pyplot()
    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k in sorted({r["bm25_k"] for r in result["grid"]}):
        pts = sorted([r for r in result["grid"] if r["bm25_k"] == k], key=lambda r: r["latency_ms"])
        ax.plot([r["latency_ms"] for r in pts], [r[metric] for r in pts], marker="o", alpha=0.6, label=f"BM25 k={k}")
        for r in pts:
            ax.annotate(str(r["rerank_k"]), (r["latency_ms"], r[metric]), textcoords="offset points", xytext=(3, 3), fontsize=7)
    front = sorted([r for r in result["grid"] if r["pareto"]], key=lambda r: r["latency_ms"])
    ax.step([r["latency_ms"] for r in front], [r[metric] for r in front], where="post", color="black", lw=1,
            label="Pareto front")
    ax.axvline(result["budget_ms"], color="red", ls="--", lw=1, label=f"budget {result['budget_ms']:g} ms")
    if result["chosen"]:
        c = result["chosen"]
        ax.scatter([c["latency_ms"]], [c[metric]], marker="*", s=220, color="red", zorder=5, label="chosen")
    ax.set_xlabel("estimated latency per query, ms (sum of each stage's median, one query at a time)")
    ax.set_ylabel(f"{metric} on the tuning queries")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, ax, path, title or "Cutoffs: quality vs latency (labels: rerank depth)")


def tuning_queries(config: dict, dataset, corpus, pipeline_path, split: str) -> tuple[Queries, Qrels, bool]:
    """The queries a saved pipeline's settings may be chosen on: of its own training split, only those it held out
    of its adapters' training; of another split, all. Returns (queries, qrels, whether they are the held-out ones)."""
    info = config.get("info", {})
    if dataset.corpus.fingerprint() != corpus.fingerprint():
        raise ValueError(f"{pipeline_path} indexes another corpus than {dataset.path}")
    held = info.get("held_out") if split == info.get("split") else None
    if split == info.get("split") and not held:
        raise ValueError(f"{pipeline_path} was trained on {split!r} and kept no held-out queries; "
                         f"choose on another split")
    qids = held or [q for q in dataset.queries if q in dataset.qrels]
    return dataset.queries.subset(qids), {q: dataset.qrels[q] for q in qids}, bool(held)


def main(args) -> int:
    """``python -m benchmarks tune-cutoffs --pipeline PIPEDIR --dataset DIR --split dev --budget-ms 300``."""
    pipe, corpus, config = load_pipeline(args.pipeline, threads=args.threads)
    info = config.get("info", {})
    tune_q, tune_qrels, held = tuning_queries(config, load_dataset(args.dataset, args.tune_split), corpus, args.pipeline,
                                              args.tune_split)
    print(f"tuning on {len(tune_q)} queries of {args.tune_split!r}"
          f"{' (held out of the adapters training)' if held else ''}; budget {args.budget_ms:g} ms")
    result = tune(pipe, tune_q, tune_qrels, args.budget_ms, args.bm25_ks, [0, *args.depths], args.latency_queries)
    result["tune_split"] = args.tune_split
    args.output.mkdir(parents=True, exist_ok=True)
    c = result["chosen"]
    if c is not None:  # the chosen cutoffs on the evaluated split: quality and measured latency
        ev_ds = load_dataset(args.dataset, args.split)
        chosen = _configure(pipe, c["bm25_k"], c["rerank_k"])
        ev = evaluate(chosen.search(ev_ds.queries), ev_ds.qrels, ["nDCG@10", "R@100", "RR@10"])
        _, total = measure_latency(chosen, ev_ds.queries, args.latency_queries)
        configured = _configure(pipe, info.get("settings", {}).get("bm25_k", 1000),
                                info.get("stages", {}).get("rerank", {}).get("depth", pipe.stages[-1].k))
        ev_default = evaluate(configured.search(ev_ds.queries), ev_ds.qrels, ["nDCG@10"])
        result["evaluated"] = {"split": args.split, "queries": ev.queries, "metrics": ev.aggregate,
                               "latency_ms": {"p50": float(np.percentile(total, 50) * 1000),
                                              "p95": float(np.percentile(total, 95) * 1000)},
                               "trained_cutoffs_nDCG@10": ev_default.aggregate["nDCG@10"]}
    write_json(args.output / "cutoffs.json", result)
    plot(result, args.output / "cutoffs.png")
    rows = sorted(result["grid"], key=lambda r: r["latency_ms"])
    table = md_table(["BM25 k", "rerank k", "est. latency ms", "nDCG@10 (tuning)", "Pareto"],
                      [[r["bm25_k"], r["rerank_k"], r["latency_ms"], r["nDCG@10"], "*" if r["pareto"] else ""]
                       for r in rows])
    text = [table, ""]
    if c is None:
        text.append(f"No setting fits {args.budget_ms:g} ms: the cheapest needs {rows[0]['latency_ms']:.0f} ms.")
    else:
        e = result["evaluated"]
        text.append(f"Chosen for {args.budget_ms:g} ms: BM25 k={c['bm25_k']}, rerank k={c['rerank_k']} "
                    f"(estimated {c['latency_ms']:.0f} ms, nDCG@10 {c['nDCG@10']:.4f} on the tuning queries). On "
                    f"{e['split']} ({e['queries']} queries): nDCG@10 {e['metrics']['nDCG@10']:.4f} (the pipeline's "
                    f"trained cutoffs: {e['trained_cutoffs_nDCG@10']:.4f}); measured latency p50 "
                    f"{e['latency_ms']['p50']:.0f} ms, p95 {e['latency_ms']['p95']:.0f} ms.")
    (args.output / "cutoffs.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n".join(text))
    print(f"wrote {args.output}/cutoffs.json, cutoffs.md, cutoffs.png")
    return 0
