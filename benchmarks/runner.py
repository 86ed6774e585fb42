"""Benchmark runner: pipelines x datasets -> a side-by-side table, metrics.json, run.trec, report.md.

Per dataset and pipeline it writes ``OUTDIR/<dataset>/<pipeline>/``:

- ``metrics.json``: ``{"dataset", "split", "pipeline", "queries", "metrics": {...}, "stages": [{"name", "k",
  "metrics", "latency_ms": {"p50", "p95"}}], "index_seconds", ...}`` (these keys are stable);
- ``run.trec``: the final ranking;
- ``report.md``: the same figures for a person.

and ``OUTDIR/summary.json`` + ``OUTDIR/summary.md`` with every row.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from retrieval.stage import Pipeline
from retrieval.types import Queries
from retrieval.util import library_version, write_json

from .datasets import Dataset, load_dataset
from .metrics import DEFAULT_MEASURES, evaluate

TABLE_METRICS = ("nDCG@10", "R@100", "R@1000", "RR@10", "AP")


@dataclass
class Built:
    """A pipeline ready to run, with what it cost to build."""

    pipeline: Pipeline
    index_seconds: float
    index_reused: bool
    settings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass
class RunOptions:
    split: str
    train_split: str = "train"
    output: Path = Path("results")
    index_dir: Path | None = None
    latency_queries: int = 100
    threads: int | None = None
    k: int = 1000
    dense_factory: str = "Flat"
    dense_k: int = 100
    dense_epochs: int = 8
    dense_both_epochs: int | None = None  # None: default_settings (supervised 4, corpus 2)
    rerank_epochs: int = 3
    rerank_depths: tuple[int, ...] = (10, 20, 30)
    rerank_fit_queries: int = 120
    rerank_epoch_curve: bool = False


Builder = Callable[[Dataset, RunOptions], Built]


def _bm25_builder(backend: str, fit: bool = False) -> Builder:
    def build(ds: Dataset, opts: RunOptions) -> Built:
        from retrieval.stages.bm25 import BM25

        cache = opts.index_dir / "bm25" if opts.index_dir else None
        stage, built_now = BM25.from_corpus(ds.corpus, backend=backend, cache_dir=cache, k=opts.k, threads=opts.threads)
        extra: dict = {}
        if fit:
            train = load_dataset(ds.path, opts.train_split)
            result = stage.fit(train.queries, train.qrels, save=False)
            extra["fit"] = {"split": opts.train_split, "queries": len(train.queries), **result.to_dict()}
        settings = {"backend": backend, "k": stage.k, "k1": stage.k1, "b": stage.b, "index": str(stage.index_dir)}
        return Built(Pipeline([stage], name="bm25"), stage.build_seconds, not built_now, settings, extra)

    return build


def _encoder():
    from encoders.bi_encoder import BiEncoder

    return BiEncoder()


def _trained_encoder(ds: Dataset, opts: RunOptions, mode: str, index) -> tuple[object, dict]:
    """An encoder with a LoRA adapter trained for ``mode``, cached by data and settings.

    - ``query``: query-only adapter on the training split's judgements, base document vectors;
    - ``supervised``: both sides, training split's judgements, BM25 hard negatives;
    - ``corpus``: both sides, pseudo-queries from the evaluated corpus (no judgements at all).
    """
    import hashlib
    import json

    from encoders.bi_encoder import BiEncoder
    from encoders.train import default_settings, train_dense
    from retrieval.stages.bm25 import BM25
    from retrieval.util import default_cache_dir, read_json

    enc = _encoder()
    settings = default_settings(mode, {"query": opts.dense_epochs, "corpus-query": None}.get(mode, opts.dense_both_epochs))
    train = load_dataset(ds.path, opts.train_split) if mode in ("query", "supervised") else None
    data = ({"queries": sorted(train.queries.items()), "qrels": sorted((q, sorted(d.items())) for q, d in train.qrels.items())}
            if train else {"pseudo": "title/sentence pseudo-queries, seed 0"})
    key = hashlib.sha256(json.dumps({
        "mode": mode, "corpus": ds.corpus.fingerprint(), **data,
        "encoder": enc.fingerprint("document"), "settings": settings.to_dict(),
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]
    root = (opts.index_dir or default_cache_dir()) / "adapters" / f"dense-{mode}-{key}"
    if (root / "retrieval_config.json").is_file():
        return BiEncoder.load(root), read_json(root / "train_result.json", "training result")
    bm25 = None
    if mode in ("supervised", "corpus"):
        bm25, _ = BM25.from_corpus(ds.corpus, cache_dir=opts.index_dir / "bm25" if opts.index_dir else None,
                                   threads=opts.threads)
    enc, result = train_dense(mode, ds.corpus, train.queries if train else None, train.qrels if train else None,
                              settings, enc, index, bm25)
    enc.save(root, overwrite=True)
    info = {"split": opts.train_split if train else "none (pseudo-queries from the corpus)", "cached_at": str(root),
            **result.to_dict()}
    write_json(root / "train_result.json", info)
    return enc, info


def _dense_builder(adapter: str | None, hybrid: bool) -> Builder:
    def build(ds: Dataset, opts: RunOptions) -> Built:
        from retrieval.stages.bm25 import BM25
        from retrieval.stages.dense import Dense, document_index
        from retrieval.stages.fusion import fit_weight
        from encoders.train import split_queries

        enc = _encoder()
        cache = opts.index_dir / "dense" if opts.index_dir else None
        index, built_now, path = document_index(enc, ds.corpus, opts.dense_factory, cache_dir=cache)
        extra: dict = {}
        if adapter is not None:
            enc, extra["train"] = _trained_encoder(ds, opts, adapter, index)
            if adapter in ("supervised", "corpus"):  # documents are encoded with the adapter too: their own index
                index, built_now, path = document_index(enc, ds.corpus, opts.dense_factory, cache_dir=cache)
        settings = {"factory": opts.dense_factory, "index": str(path), "adapter": adapter,
                    "base_model": enc.base_model, "max_length": enc.max_length}
        if not hybrid:
            dense = Dense(enc, index, mode="retrieve", k=opts.k)
            return Built(Pipeline([dense], name="dense"), index.build_seconds, not built_now, settings, extra)
        bm25, bm25_built = BM25.from_corpus(ds.corpus, cache_dir=opts.index_dir / "bm25" if opts.index_dir else None,
                                            k=opts.k, threads=opts.threads)
        # The fusion weight is chosen on training queries the adapter never took a gradient step on:
        # all of the training split for a zero-shot encoder, the held-out validation slice otherwise.
        train = load_dataset(ds.path, opts.train_split)
        fit_q = list(train.queries)
        if adapter in ("query", "supervised"):
            _, fit_q = split_queries([q for q in train.queries if q in train.qrels], 0.15, 0)
        fit_queries = train.queries.subset(fit_q)
        first = bm25.search(fit_queries)
        dense = Dense(enc, index, mode="hybrid", k=opts.k, neighbours=opts.dense_k)
        fusion, grid = fit_weight(first, dense.dense_scores(fit_queries, first), {q: train.qrels[q] for q in fit_q})
        dense.fusion = fusion
        extra["fusion"] = {"fitted_on": f"{opts.train_split} ({len(fit_q)} queries)", **fusion.to_dict(), "grid": grid}
        settings.update(fusion=fusion.to_dict(), bm25_k=bm25.k, neighbours=opts.dense_k)
        return Built(Pipeline([bm25, dense], name="hybrid"), index.build_seconds + bm25.build_seconds,
                     not (built_now or bm25_built), settings, extra)

    return build


def _reranker(max_length: int):
    from rerankers.cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker(max_length=max_length)


def _trained_reranker(ds: Dataset, opts: RunOptions, mode: str, bm25) -> tuple[object, dict, dict | None]:
    """A cross-encoder with a LoRA adapter trained for ``mode`` (cached by data and settings), and, for
    ``supervised``, the held-out training queries it never trained on ({"texts", "qrels"}), for choosing
    depth and fusion weight."""
    import hashlib
    import json

    from rerankers.cross_encoder import CrossEncoderReranker
    from rerankers.train import RerankTrainSettings, split_examples, train_reranker, training_examples
    from retrieval.util import default_cache_dir, read_json

    # corpus mode: at most 800 pseudo-queries per epoch (~7 minutes an epoch on 2 CPU cores)
    settings = RerankTrainSettings(mode=mode, epochs=opts.rerank_epochs, max_items=800 if mode == "corpus" else None)
    train = load_dataset(ds.path, opts.train_split) if mode == "supervised" else None
    examples = training_examples(mode, ds.corpus, train.queries if train else None, train.qrels if train else None,
                                 settings.seed)
    fit_data = None
    if train:
        held = split_examples(examples, settings)[1][: opts.rerank_fit_queries]
        fit_data = {"texts": {q: train.queries[q] for q in held}, "qrels": {q: dict(train.qrels[q]) for q in held}}
    reranker = _reranker(settings.max_length)
    key = hashlib.sha256(json.dumps({
        "mode": mode, "corpus": ds.corpus.fingerprint(), "examples": [(e.qid, e.query, sorted(e.positives)) for e in examples],
        "base": reranker.base_fingerprint(), "settings": settings.to_dict(),
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]
    root = (opts.index_dir or default_cache_dir()) / "adapters" / f"rerank-{mode}-{key}"
    if (root / "retrieval_config.json").is_file():
        return CrossEncoderReranker.load(root), read_json(root / "train_result.json", "training result"), fit_data
    from safetensors.torch import save_file

    states: dict[int, dict] = {}
    result = train_reranker(reranker, ds.corpus, examples, [bm25], settings,
                            on_epoch=lambda epoch, state: states.__setitem__(epoch, state))
    reranker.save(root, overwrite=True)
    (root / "epochs").mkdir()
    for epoch, state in states.items():  # every epoch's adapter, for the dev-vs-epochs report
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / "epochs" / f"epoch-{epoch}.safetensors"))
    info = {"split": opts.train_split if train else "none (pseudo-queries from the corpus)", "cached_at": str(root),
            **result.to_dict()}
    write_json(root / "train_result.json", info)
    return reranker, info, fit_data


def _epoch_curve(ds: Dataset, stage, bm25, train_info: dict) -> list[dict]:
    """nDCG@10 on the evaluated split after each training epoch, at the depth and fusion weight chosen for
    the kept epoch. A report only: nothing is chosen from it (the kept epoch is chosen on validation)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    reranker = stage.reranker
    folder = Path(train_info["cached_at"]) / "epochs"
    first = bm25.search(ds.queries, k=stage.k)
    rows = []
    kept = {k: v.clone() for k, v in get_peft_model_state_dict(reranker.model, adapter_name=reranker.active_adapter).items()}
    try:
        for h in train_info["history"]:
            path = folder / f"epoch-{h['epoch']}.safetensors"
            if not path.is_file():
                continue
            set_peft_model_state_dict(reranker.model, load_file(str(path)), adapter_name=reranker.active_adapter)
            fused = stage.search(ds.queries, first)  # its stages["alone"] is the reranker before fusion
            rows.append({"epoch": h["epoch"], "val_nDCG@10": h["val_nDCG@10"],
                         "nDCG@10 alone": evaluate(fused.stages["alone"], ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"],
                         "nDCG@10 fused": evaluate(fused, ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"]})
    finally:  # the kept epoch's weights back in place
        set_peft_model_state_dict(reranker.model, kept, adapter_name=reranker.active_adapter)
    return rows


def _rerank_builder(mode: str) -> Builder:
    def build(ds: Dataset, opts: RunOptions) -> Built:
        from retrieval.stages.bm25 import BM25
        from retrieval.stages.fusion import Fusion
        from retrieval.stages.rerank import Rerank, fit_rerank

        bm25, bm25_built = BM25.from_corpus(ds.corpus, cache_dir=opts.index_dir / "bm25" if opts.index_dir else None,
                                            k=opts.k, threads=opts.threads)
        reranker, train_info, fit_data = _trained_reranker(ds, opts, mode, bm25)
        # keep_rest: BM25's candidates below the reranked top stay in the ranking, so recall is BM25's
        stage = Rerank(reranker, ds.corpus, k=max(opts.rerank_depths), keep_rest=True)
        if fit_data is not None:
            # Depth and fusion weight are chosen on training queries the reranker never took a gradient step on.
            fit_queries = Queries(fit_data["texts"])
            depth, fusion, rows = fit_rerank(stage, fit_queries, bm25.search(fit_queries, k=max(opts.rerank_depths)),
                                             fit_data["qrels"], depths=opts.rerank_depths)
            fitted_on = f"{len(fit_queries)} held-out training queries"
        else:
            # No labels: held-out pseudo-queries cannot choose here, because BM25 alone finds a title's own
            # document at rank 1 (on Medline it scored 1.0 and the fit switched the reranker off). So the
            # label-free rule fixed in advance: equal weights of the z-scored scores, depth 20.
            depth, fusion, rows = 20, Fusion("weighted", (0.5, 0.5)), []
            fitted_on = "nothing (no labels): equal weights and depth 20, fixed in advance"
        stage.k, stage.fusion = depth, fusion
        curve = _epoch_curve(ds, stage, bm25, train_info) if opts.rerank_epoch_curve else None
        extra = {"train": train_info, "fusion": {"fitted_on": fitted_on,
                                                 "depth": depth, **fusion.to_dict(),
                                                 "depths": [{k: v for k, v in r.items() if k != "grid"} for r in rows]}}
        if curve:
            extra["epoch_curve"] = curve
        settings = {"bm25_k": bm25.k, "rerank_k": depth, "fusion": fusion.to_dict(), "base_model": reranker.base_model,
                    "max_length": reranker.max_length, "precision": reranker.precision, "adapter": train_info["cached_at"]}
        return Built(Pipeline([bm25, stage], name="bm25>>ce"), bm25.build_seconds, not bm25_built, settings, extra)

    return build


PIPELINES: dict[str, Builder] = {
    "bm25": _bm25_builder("lucene"),
    "bm25-rank": _bm25_builder("rank_bm25"),
    "bm25-fit": _bm25_builder("lucene", fit=True),
    "dense": _dense_builder(None, hybrid=False),
    "dense-lora-query": _dense_builder("query", hybrid=False),
    "dense-lora": _dense_builder("supervised", hybrid=False),
    "dense-corpus": _dense_builder("corpus", hybrid=False),
    "dense-corpus-query": _dense_builder("corpus-query", hybrid=False),
    "hybrid": _dense_builder(None, hybrid=True),
    "hybrid-lora-query": _dense_builder("query", hybrid=True),
    "bm25>>ce": _rerank_builder("supervised"),
    "bm25>>ce-corpus": _rerank_builder("corpus"),
}
DESCRIPTIONS = {
    "bm25": "Lucene BM25 via Pyserini, k1=0.9 b=0.4, title + text",
    "bm25-rank": "rank-bm25 (Java-free), k1=0.9 b=0.4, Porter-stemmed tokens",
    "bm25-fit": "Lucene BM25 with k1 and b grid-searched on the training split",
    "dense": "all-MiniLM-L6-v2 zero-shot, exact (Flat) FAISS search",
    "dense-lora-query": "MiniLM with a query-only LoRA adapter trained on the training split; base document index",
    "dense-lora": "MiniLM with a LoRA adapter on both sides, trained on the training split with BM25 hard negatives",
    "dense-corpus": "MiniLM with a LoRA adapter on both sides trained on pseudo-queries from the corpus (no labels)",
    "dense-corpus-query": "MiniLM with a query-only LoRA adapter trained on pseudo-queries from the corpus (no labels, no re-encoding)",
    "hybrid": "BM25 top-k >> zero-shot dense: candidates + ANN neighbours, weighted fusion fitted on train",
    "hybrid-lora-query": "BM25 top-k >> query-only LoRA dense, weighted fusion fitted on held-out training queries",
    "bm25>>ce": "BM25 >> MiniLM cross-encoder with a LoRA adapter + new head trained on the training split (BM25 hard "
                "negatives); depth and BM25/reranker fusion weight chosen on held-out training queries",
    "bm25>>ce-corpus": "BM25 >> MiniLM LoRA cross-encoder trained on pseudo-queries from the corpus (no labels); equal "
                       "BM25/reranker weights and depth 20, fixed in advance",
}


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0}
    arr = np.asarray(values) * 1000.0
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


def measure_latency(pipeline: Pipeline, queries: Queries, n: int, seed: int = 0) -> tuple[dict[str, list[float]], list[float]]:
    """Run up to ``n`` queries one at a time; per-stage and total seconds per query."""
    qids = list(queries)
    if n < len(qids):
        rng = np.random.default_rng(seed)
        qids = [qids[i] for i in sorted(rng.choice(len(qids), size=n, replace=False))]
    per_stage: dict[str, list[float]] = {s.name: [] for s in pipeline.stages}
    total: list[float] = []
    if qids:  # warm-up outside the measurement (JIT, caches)
        pipeline.search(Queries({qids[0]: queries[qids[0]]}))
    for qid in tqdm(qids, desc="latency", unit="q", leave=False):
        t0 = time.perf_counter()
        ranking = pipeline.search(Queries({qid: queries[qid]}))
        total.append(time.perf_counter() - t0)
        for trace in ranking.trace:
            per_stage[trace.name].append(trace.seconds)
    return per_stage, total


def run_one(ds: Dataset, pipeline_name: str, opts: RunOptions) -> dict:
    if pipeline_name not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline_name!r}; available: {', '.join(PIPELINES)}")
    built = PIPELINES[pipeline_name](ds, opts)
    pipe = built.pipeline

    # Latency first: its warm-up query also warms the batch pass (JIT, caches, lazy model loads).
    per_stage_lat, total_lat = measure_latency(pipe, ds.queries, opts.latency_queries)
    t0 = time.perf_counter()
    ranking = pipe.search(ds.queries, keep_stages=True)
    batch_seconds = time.perf_counter() - t0
    ev = evaluate(ranking, ds.qrels, DEFAULT_MEASURES)
    stages = []
    for stage, trace in zip(pipe.stages, ranking.trace):
        k = stage.k or opts.k
        names = list(dict.fromkeys(["nDCG@10", f"R@{k}", "RR@10", *DEFAULT_MEASURES]))
        stage_ev = evaluate(ranking.stages[stage.name], ds.qrels, names)
        stages.append({
            "name": stage.name,
            "k": k,
            "metrics": stage_ev.aggregate,
            "latency_ms": _percentiles(per_stage_lat[stage.name]),
            "batch_seconds": trace.seconds,
            "candidates_out": trace.candidates_out,
        })
        parts = {name.split("/", 1)[1]: evaluate(r, ds.qrels, names).aggregate
                 for name, r in ranking.stages.items() if name.startswith(f"{stage.name}/")}
        if parts:  # e.g. the reranker's own ranking before fusion with the incoming scores
            stages[-1]["parts"] = parts

    out_dir = opts.output / ds.name / pipeline_name
    out_dir.mkdir(parents=True, exist_ok=True)
    ranking.to_trec(out_dir / "run.trec", tag=pipeline_name.replace(">", "_"))
    record = {
        "dataset": ds.name,
        "split": ds.split,
        "pipeline": pipeline_name,
        "description": DESCRIPTIONS.get(pipeline_name, ""),
        "queries": ev.queries,
        "metrics": ev.aggregate,
        "stages": stages,
        "index_seconds": built.index_seconds,
        "index_reused": built.index_reused,
        "latency_ms": _percentiles(total_lat),
        "latency_queries": len(total_lat),
        "qps": len(ds.queries) / batch_seconds if batch_seconds > 0 else None,
        "batch_seconds": batch_seconds,
        "settings": built.settings,
        **built.extra,
        "dataset_path": str(ds.path),
        "docs": len(ds.corpus),
        "library_version": library_version(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]) if sys.argv and "benchmarks" in sys.argv[0] else None,
    }
    if built.extra.get("fit"):
        from .plots import fit_heatmap

        record["plots"] = [fit_heatmap(built.extra["fit"], out_dir / "fit_grid.png",
                                       f"{ds.name}: BM25 {built.extra['fit']['metric']} on "
                                       f"{built.extra['fit']['split']} by k1 and b").name]
    write_json(out_dir / "metrics.json", record)
    (out_dir / "report.md").write_text(_report(record), encoding="utf-8")
    write_json(out_dir / "per_query.json", ev.per_query)
    return record


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _report(r: dict) -> str:
    parts = [
        f"# {r['pipeline']} on {r['dataset']} ({r['split']}, {r['queries']} queries)",
        "",
        r.get("description", ""),
        "",
        _md_table(list(r["metrics"]), [list(r["metrics"].values())]),
        "",
        "## Stages",
        "",
        _md_table(
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
                  f"{t['start_val']:.4f} -> {t['best_val']:.4f}).", "",
                  _md_table(["epoch", "loss", "val nDCG@10", "seconds"],
                            [[h["epoch"], h["loss"], h["val_nDCG@10"], h["seconds"]] for h in t["history"]])]
    for s in r["stages"]:
        for part, m in s.get("parts", {}).items():
            parts += ["", f"Stage `{s['name']}` {part} (before fusion): nDCG@10 {m['nDCG@10']:.4f}, RR@10 {m['RR@10']:.4f}."]
    if r.get("epoch_curve"):
        parts += ["", f"## {r['split']} nDCG@10 after each training epoch (a report only: the kept epoch was chosen "
                      "on validation, the depth and weight on held-out training queries)", "",
                  _md_table(["epoch", "validation nDCG@10", f"{r['split']} nDCG@10 reranker alone", f"{r['split']} nDCG@10 fused"],
                            [[c["epoch"], c["val_nDCG@10"], c["nDCG@10 alone"], c["nDCG@10 fused"]] for c in r["epoch_curve"]])]
    if r.get("fusion"):
        f = r["fusion"]
        names = "(BM25, reranker)" if "depth" in f else "(BM25, dense)"
        parts += ["", f"Fusion: {f['method']} ({f['norm']}), weights {f['weights']} {names}, "
                      f"chosen on {f['fitted_on']}."]
        if f.get("depths"):
            parts += ["", _md_table(["depth", "best weight", "nDCG@10 fused", "nDCG@10 reranker alone"],
                                    [[d["depth"], d["weight"], d["nDCG@10"], d["nDCG@10 alone"]] for d in f["depths"]]),
                      "", f"(on the held-out training queries; depth {f['depth']} chosen)"]
    return "\n".join(parts) + "\n"


def summary_table(records: Sequence[dict]) -> str:
    headers = ["dataset", "split", "pipeline", *TABLE_METRICS, "p50 ms", "p95 ms", "q/s", "index s"]
    rows = [
        [r["dataset"], r["split"], r["pipeline"], *[r["metrics"].get(m) for m in TABLE_METRICS],
         r["latency_ms"]["p50"], r["latency_ms"]["p95"], r["qps"], r["index_seconds"]]
        for r in records
    ]
    return _md_table(headers, rows)


def run(datasets: Sequence[str | Path], pipelines: Sequence[str], opts: RunOptions) -> list[dict]:
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        raise ValueError(f"unknown pipeline(s) {unknown}; available: {', '.join(PIPELINES)}")
    records = []
    for path in datasets:
        ds = load_dataset(path, opts.split)
        for name in pipelines:
            print(f"[{ds.name}/{opts.split}] {name} ...", file=sys.stderr, flush=True)
            records.append(run_one(ds, name, opts))
    opts.output.mkdir(parents=True, exist_ok=True)
    write_json(opts.output / "summary.json", records)
    table = summary_table(records)
    (opts.output / "summary.md").write_text(table + "\n", encoding="utf-8")
    return records
