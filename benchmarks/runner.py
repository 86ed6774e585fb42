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
    dense_model: str | None = None     # None: the packaged all-MiniLM-L6-v2
    rerank_model: str | None = None
    rerank_precision: str = "auto"
    rerank_negatives: tuple[str, ...] = ("bm25",)
    baseline: str | None = "bm25"      # the condition every other is tested against (paired t-test)


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


def _trained_encoder(ds: Dataset, opts: RunOptions, mode: str, index) -> tuple[object, dict]:
    """An encoder with a LoRA adapter trained for ``mode`` (``retrieval.train.dense_adapter``, cached):

    - ``query``: query-only adapter on the training split's judgements, base document vectors;
    - ``supervised``: both sides, training split's judgements, BM25 hard negatives;
    - ``corpus`` / ``corpus-query``: pseudo-queries from the evaluated corpus (no judgements at all).
    """
    from retrieval.train import bm25_stage, dense_adapter

    train = load_dataset(ds.path, opts.train_split) if mode in ("query", "supervised") else None
    bm25 = bm25_stage(ds.corpus, opts.index_dir, threads=opts.threads)[0] if mode in ("supervised", "corpus") else None
    epochs = {"query": opts.dense_epochs, "corpus-query": None}.get(mode, opts.dense_both_epochs)
    return dense_adapter(mode, ds.corpus, train.queries if train else None, train.qrels if train else None, index,
                         epochs, opts.index_dir, bm25, opts.train_split, opts.dense_model)


def _dense_builder(adapter: str | None, hybrid: bool) -> Builder:
    def build(ds: Dataset, opts: RunOptions) -> Built:
        from encoders.bi_encoder import BiEncoder
        from encoders.train import split_queries
        from retrieval.stages.dense import Dense
        from retrieval.stages.fusion import fit_weight
        from retrieval.train import base_index, bm25_stage

        enc = BiEncoder(opts.dense_model)
        index, built_now, path = base_index(enc, ds.corpus, opts.dense_factory, opts.index_dir)
        extra: dict = {}
        if adapter is not None:
            enc, extra["train"] = _trained_encoder(ds, opts, adapter, index)
            if adapter in ("supervised", "corpus"):  # documents are encoded with the adapter too: their own index
                index, built_now, path = base_index(enc, ds.corpus, opts.dense_factory, opts.index_dir)
        settings = {"factory": opts.dense_factory, "index": str(path), "adapter": adapter,
                    "base_model": enc.base_model, "max_length": enc.max_length}
        if not hybrid:
            dense = Dense(enc, index, mode="retrieve", k=opts.k)
            return Built(Pipeline([dense], name="dense"), index.build_seconds, not built_now, settings, extra)
        bm25, bm25_built = bm25_stage(ds.corpus, opts.index_dir, k=opts.k, threads=opts.threads)
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


_BUILT: dict[tuple, object] = {}  # full pipelines built in this process, shared by `full` and `bm25>>ce`


def _settings(opts: RunOptions, corpus_only: bool):
    from retrieval.train import PipelineSettings

    return PipelineSettings(corpus_only=corpus_only, bm25_k=opts.k, dense_factory=opts.dense_factory,
                            dense_k=opts.dense_k, neighbours=opts.dense_k,
                            dense_epochs=opts.dense_epochs if not corpus_only else None,
                            rerank_epochs=opts.rerank_epochs, rerank_depths=opts.rerank_depths,
                            fit_queries=opts.rerank_fit_queries, dense_model=opts.dense_model,
                            rerank_model=opts.rerank_model, rerank_precision=opts.rerank_precision,
                            rerank_negatives=opts.rerank_negatives)


def _pipeline_for(ds: Dataset, opts: RunOptions, corpus_only: bool):
    """BM25 >> hybrid LoRA dense >> LoRA reranker, trained on the training split (or, corpus-only, on
    pseudo-queries from the corpus); ``retrieval.train.build_pipeline`` with its adapter cache."""
    from retrieval.train import build_pipeline

    settings = _settings(opts, corpus_only)
    key = (str(ds.path), ds.corpus.fingerprint(), opts.train_split, str(opts.index_dir), str(settings.to_dict()))
    if key not in _BUILT:
        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        if corpus_only:
            _BUILT[key] = build_pipeline(ds.corpus, settings=settings, cache_dir=opts.index_dir, threads=opts.threads, log=log)
        else:
            train = load_dataset(ds.path, opts.train_split)
            _BUILT[key] = build_pipeline(ds.corpus, train.queries, train.qrels, settings, cache_dir=opts.index_dir,
                                         threads=opts.threads, split=opts.train_split, log=log)
    return _BUILT[key]


def _epoch_curve(ds: Dataset, stage, first, train_info: dict) -> list[dict]:
    """nDCG@10 on the evaluated split after each training epoch, at the depth and fusion weight chosen for
    the kept epoch; ``first`` is the stage (or pipeline) before the reranker. A report only: nothing is chosen
    from it (the kept epoch is chosen on validation)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    reranker = stage.reranker
    folder = Path(train_info["cached_at"]) / "epochs"
    candidates = first.search(ds.queries)
    rows = []
    kept = {k: v.clone() for k, v in get_peft_model_state_dict(reranker.model, adapter_name=reranker.active_adapter).items()}
    try:
        for h in train_info["history"]:
            path = folder / f"epoch-{h['epoch']}.safetensors"
            if not path.is_file():
                continue
            set_peft_model_state_dict(reranker.model, load_file(str(path)), adapter_name=reranker.active_adapter)
            fused = stage.search(ds.queries, candidates)  # its stages["alone"] is the reranker before fusion
            rows.append({"epoch": h["epoch"], "val_nDCG@10": h["val_nDCG@10"],
                         "nDCG@10 alone": evaluate(fused.stages["alone"], ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"],
                         "nDCG@10 fused": evaluate(fused, ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"]})
    finally:  # the kept epoch's weights back in place
        set_peft_model_state_dict(reranker.model, kept, adapter_name=reranker.active_adapter)
    return rows


def _fusion_extra(info: dict) -> dict:
    f = info["fusion"]
    return {"fitted_on": f["fitted_on"], "depth": info["depth"], **{k: f[k] for k in ("method", "weights", "rrf_k", "norm")},
            "depths": f.get("depths", [])}


def _rerank_builder(corpus_only: bool) -> Builder:
    """BM25 >> the full pipeline's reranker (the dense stage left out), depth and weight fitted for BM25's
    candidates on the same held-out training queries (corpus-only: the rule fixed in advance)."""

    def build(ds: Dataset, opts: RunOptions) -> Built:
        from retrieval.stages.fusion import Fusion
        from retrieval.stages.rerank import Rerank, fit_rerank

        full = _pipeline_for(ds, opts, corpus_only)
        bm25, _, full_rerank = full.pipeline.stages
        train_info = full.info["stages"]["rerank"]["train"]
        # keep_rest: BM25's candidates below the reranked top stay in the ranking, so recall is BM25's
        stage = Rerank(full_rerank.reranker, ds.corpus, k=max(opts.rerank_depths), keep_rest=True)
        if not corpus_only:
            train = load_dataset(ds.path, opts.train_split)
            fit_q = train.queries.subset(full.info["held_out"])
            depth, fusion, rows = fit_rerank(stage, fit_q, bm25.search(fit_q, k=max(opts.rerank_depths)),
                                             {q: train.qrels[q] for q in fit_q}, depths=opts.rerank_depths)
            fitted_on = full.info["stages"]["rerank"]["fusion"]["fitted_on"]
        else:
            # No labels: held-out pseudo-queries cannot choose here, because BM25 alone finds a title's own
            # document at rank 1 (on Medline it scored 1.0 and the fit switched the reranker off). So the
            # label-free rule fixed in advance: equal weights of the z-scored scores, depth 20.
            depth, fusion, rows = 20, Fusion("weighted", (0.5, 0.5)), []
            fitted_on = "nothing (no labels): equal weights and depth 20, fixed in advance"
        stage.k, stage.fusion = depth, fusion
        curve = _epoch_curve(ds, stage, bm25, train_info) if opts.rerank_epoch_curve else None
        extra = {"train": train_info, "train_seconds": train_info["seconds"],
                 "fusion": _fusion_extra({"depth": depth, "fusion": {"fitted_on": fitted_on, **fusion.to_dict(),
                                          "depths": [{k: v for k, v in r.items() if k != "grid"} for r in rows]}})}
        if curve:
            extra["epoch_curve"] = curve
        ce = stage.reranker
        settings = {"bm25_k": bm25.k, "rerank_k": depth, "fusion": fusion.to_dict(), "base_model": ce.base_model,
                    "max_length": ce.max_length, "precision": ce.precision, "adapter": train_info["cached_at"]}
        return Built(Pipeline([bm25, stage], name="bm25>>ce"), bm25.build_seconds, True, settings, extra)

    return build


def _full_builder(corpus_only: bool) -> Builder:
    """The full pipeline, saved to ``OUTDIR/<dataset>/<condition>/pipeline`` and evaluated as loaded back from
    that folder (so the folder a user keeps is the one measured)."""

    def build(ds: Dataset, opts: RunOptions) -> Built:
        from retrieval.saved import load_pipeline, save_pipeline

        full = _pipeline_for(ds, opts, corpus_only)
        name = "full-corpus" if corpus_only else "full"
        folder = opts.output / ds.name / name / "pipeline"
        save_pipeline(full.pipeline, folder, ds.corpus, full.info, overwrite=True)
        pipe, _, _ = load_pipeline(folder, threads=opts.threads, corpus=ds.corpus)
        pipe.name = name
        return _saved_built(pipe, full.info, folder, ds, opts)

    return build


def _saved_built(pipe: Pipeline, info: dict, folder: Path, ds: Dataset, opts: RunOptions) -> Built:
    stages = info.get("stages", {})
    extra: dict = {"pipeline_dir": str(folder), "train_seconds": info.get("train_seconds")}
    rerank = stages.get("rerank")
    if rerank:
        extra["train"] = rerank["train"]
        extra["fusion"] = _fusion_extra(rerank)
        if opts.rerank_epoch_curve:
            extra["epoch_curve"] = _epoch_curve(ds, pipe.stages[-1], Pipeline(pipe.stages[:-1]), rerank["train"])
    if stages.get("dense"):
        extra["dense"] = {"train": stages["dense"]["train"], "fusion": stages["dense"]["fusion"]}
    if stages.get("bm25", {}).get("fit"):
        extra["bm25_fit"] = stages["bm25"]["fit"]
    settings = {"stages": repr(pipe), "corpus_only": info.get("settings", {}).get("corpus_only"),
                "bm25": {k: stages.get("bm25", {}).get(k) for k in ("k1", "b")},
                "dense_fusion": stages.get("dense", {}).get("fusion", {}).get("weights"),
                "rerank_fusion": (rerank or {}).get("fusion", {}).get("weights"), "rerank_k": (rerank or {}).get("depth")}
    index_seconds = sum(getattr(s, "build_seconds", 0.0) or getattr(getattr(s, "index", None), "build_seconds", 0.0)
                        for s in pipe.stages)
    return Built(pipe, index_seconds, True, settings, extra)


def _saved_pipeline_builder(folder: Path) -> Builder:
    """A pipeline folder from ``python -m retrieval train``, evaluated as saved."""

    def build(ds: Dataset, opts: RunOptions) -> Built:
        from retrieval.saved import PipelineMismatch, load_pipeline, pipeline_config

        config = pipeline_config(folder)
        if config["corpus"]["fingerprint"] != ds.corpus.fingerprint():
            raise PipelineMismatch(f"{folder} indexes another corpus ({config['corpus']['documents']} documents) than "
                                   f"{ds.path} ({len(ds.corpus)}); evaluate it on the dataset it was trained for")
        pipe, _, config = load_pipeline(folder, threads=opts.threads, corpus=ds.corpus)
        return _saved_built(pipe, config.get("info", {}), folder, ds, opts)

    return build


def builder_for(name: str) -> Builder:
    if name in PIPELINES:
        return PIPELINES[name]
    from retrieval.saved import is_pipeline_dir

    if is_pipeline_dir(name):
        return _saved_pipeline_builder(Path(name))
    if Path(name).exists():
        raise ValueError(f"{name}: a folder without pipeline.json; a saved pipeline comes from `python -m retrieval train`")
    raise ValueError(f"unknown pipeline {name!r}; available: {', '.join(PIPELINES)}, or a saved pipeline folder")


def condition_name(name: str) -> str:
    """The name a condition is reported under (a saved pipeline folder: its folder name)."""
    return name if name in PIPELINES else Path(name).resolve().name


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
    "bm25>>ce": _rerank_builder(False),
    "bm25>>ce-corpus": _rerank_builder(True),
    "full": _full_builder(False),
    "full-corpus": _full_builder(True),
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
    "bm25>>ce": "BM25 >> the full pipeline's LoRA cross-encoder (MiniLM + new head, trained on the training split with "
                "BM25 hard negatives by default, see --rerank-negatives); depth and BM25/reranker weight chosen on "
                "held-out training queries",
    "bm25>>ce-corpus": "BM25 >> the corpus-only pipeline's LoRA cross-encoder (pseudo-queries, no labels); equal "
                       "BM25/reranker weights and depth 20, fixed in advance",
    "full": "BM25 (k1/b fitted) >> hybrid dense with a query-side LoRA adapter >> LoRA cross-encoder; every weight and "
            "depth chosen on held-out training queries; evaluated as saved to and loaded from its folder",
    "full-corpus": "the full pipeline trained with no labels (pseudo-queries from the corpus); equal fusion weights and "
                   "rerank depth 20, fixed in advance",
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


def stage_index_bytes(stage) -> int:
    """Bytes of the stage's index: the BM25 index folder, or the FAISS index plus its stored vectors."""
    from retrieval.saved import folder_bytes

    if getattr(stage, "index_dir", None) is not None:
        return folder_bytes(stage.index_dir)
    index = getattr(stage, "index", None)
    if index is not None and hasattr(index, "vectors"):
        import faiss

        return int(faiss.serialize_index(index.index).nbytes + index.vectors.nbytes)
    return 0


def run_one(ds: Dataset, pipeline_name: str, opts: RunOptions, per_query: dict | None = None) -> dict:
    """Build, time and evaluate one condition; writes its run.trec and per_query.json and returns its record
    (``run`` adds the significance test and plots, then writes metrics.json and report.md).
    ``per_query`` (if given) receives its per-query scores."""
    built = builder_for(pipeline_name)(ds, opts)
    pipeline_name = condition_name(pipeline_name)
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
            "index_bytes": stage_index_bytes(stage),
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
        "index_bytes": sum(st["index_bytes"] for st in stages),
        "train_seconds": built.extra.get("train_seconds", (built.extra.get("train") or {}).get("seconds")),
        "latency_ms": _percentiles(total_lat),
        "latency_queries": len(total_lat),
        "qps": len(ds.queries) / batch_seconds if batch_seconds > 0 else None,
        "batch_seconds": batch_seconds,
        "settings": built.settings,
        **{k: v for k, v in built.extra.items() if k != "train_seconds"},
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
    write_json(out_dir / "per_query.json", ev.per_query)
    if per_query is not None:
        per_query.update(ev.per_query)
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
    if r.get("index_bytes") is not None or r.get("train_seconds") is not None:
        parts += ["", f"Index size: {(r.get('index_bytes') or 0) / 2**20:.1f} MB; training time: "
                      f"{_fmt(r.get('train_seconds'))} s" + (" (adapters cached: the time they took when trained)"
                                                             if r.get("train_seconds") else "") + "."]
    if r.get("significance"):
        g = r["significance"]
        parts += ["", f"Against `{g['baseline']}` on the same {g['queries']} queries: {g['metric']} {g['delta']:+.4f}, "
                      f"paired t-test t={g['t']:.2f}, p={g['p_value']:.3g} ({g['wins']} queries better, "
                      f"{g['losses']} worse)."]
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
    headers = ["dataset", "split", "pipeline", *TABLE_METRICS, "p50 ms", "p95 ms", "q/s", "index MB", "train s",
               "vs baseline"]
    rows = []
    for r in records:
        sig = r.get("significance")
        vs = f"{sig['delta']:+.4f} (p={sig['p_value']:.3g})" if sig else ("baseline" if r.get("is_baseline") else "-")
        rows.append([r["dataset"], r["split"], r["pipeline"], *[r["metrics"].get(m) for m in TABLE_METRICS],
                     r["latency_ms"]["p50"], r["latency_ms"]["p95"], r["qps"],
                     r["index_bytes"] / 2**20 if r.get("index_bytes") is not None else None,
                     r.get("train_seconds"), vs])
    return _md_table(headers, rows)


def significance(per_query: dict[str, dict[str, dict[str, float]]], baseline: str,
                 metric: str = "nDCG@10") -> dict[str, dict]:
    """Paired t-test (scipy ``ttest_rel``) of each condition's per-query ``metric`` against ``baseline``."""
    from scipy.stats import ttest_rel

    base = per_query[baseline]
    qids = sorted(base)
    out = {}
    for name, pq in per_query.items():
        if name == baseline:
            continue
        a = np.array([pq.get(q, {}).get(metric, 0.0) for q in qids])
        b = np.array([base[q][metric] for q in qids])
        if np.allclose(a, b):
            t, p = 0.0, 1.0
        else:
            res = ttest_rel(a, b)
            t, p = float(res.statistic), float(res.pvalue)
        out[name] = {"baseline": baseline, "metric": metric, "delta": float(a.mean() - b.mean()), "t": t, "p_value": p,
                     "queries": len(qids), "wins": int((a > b).sum()), "losses": int((a < b).sum())}
    return out


def check_expected(records: Sequence[dict], expected: dict) -> list[dict]:
    """Compare figures with ``expected[dataset][condition] = {"nDCG@10": value, "tolerance": t}``.

    A figure below value - tolerance is a regression ("below"); above value + tolerance, "above" (the
    expectation is out of date); otherwise "ok". A condition expected but not run is "missing".
    """
    rows = []
    seen = {(r["dataset"], r["pipeline"]): r for r in records}
    for dataset, conditions in expected.items():
        for condition, spec in conditions.items():
            spec = dict(spec)
            tolerance = float(spec.pop("tolerance", 0.005))
            for metric, value in spec.items():
                r = seen.get((dataset, condition))
                got = None if r is None else r["metrics"].get(metric)
                status = ("missing" if got is None else "below" if got < value - tolerance
                          else "above" if got > value + tolerance else "ok")
                rows.append({"dataset": dataset, "condition": condition, "metric": metric, "expected": value,
                             "tolerance": tolerance, "observed": got, "status": status})
    return rows


def _dataset_plots(records: list[dict], out_dir: Path) -> list[str]:
    from .plots import stage_latency, stage_recall

    name, split = records[0]["dataset"], records[0]["split"]
    return [stage_recall(records, out_dir / "stage_recall.png", f"{name} ({split}): recall at each stage's cutoff").name,
            stage_latency(records, out_dir / "stage_latency.png", f"{name} ({split}): latency of each stage").name]


def load_config(path: Path, datasets_root: Path) -> dict:
    """Read a TOML benchmark config: ``datasets`` (names under ``datasets_root``, or paths), ``conditions``,
    ``split``, ``train_split``, ``baseline`` and ``[expected.<dataset>]`` tables of
    ``<condition> = {"nDCG@10" = value, tolerance = t}``. Unknown keys are an error, not ignored."""
    import tomllib

    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark config not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    known = {"datasets", "conditions", "split", "train_split", "baseline", "expected", "description"}
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}")
    for key in ("datasets", "conditions"):
        if key in config and not (isinstance(config[key], list) and all(isinstance(v, str) for v in config[key])):
            raise ValueError(f"{path}: {key} must be a list of strings")
    config["datasets"] = [Path(d) if ("/" in d or Path(d).is_dir()) else datasets_root / d for d in config.get("datasets", [])]
    names = {p.name for p in config["datasets"]}
    for dataset, conditions in config.get("expected", {}).items():
        if dataset not in names:
            raise ValueError(f"{path}: expected figures for {dataset!r}, which is not among the datasets {sorted(names)}")
        for condition, spec in conditions.items():
            if not isinstance(spec, dict) or not all(isinstance(v, (int, float)) for v in spec.values()):
                raise ValueError(f"{path}: expected.{dataset}.{condition} must be a table of numbers, "
                                 f'e.g. {{ "nDCG@10" = 0.71, tolerance = 0.005 }}')
    return config


def run(datasets: Sequence[str | Path], pipelines: Sequence[str], opts: RunOptions,
        expected: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Every condition on every dataset; returns (records, expected-figure checks)."""
    for name in pipelines:
        builder_for(name)  # unknown names fail before anything is built
    records = []
    for path in datasets:
        ds = load_dataset(path, opts.split)
        per_query: dict[str, dict] = {}
        ds_records = []
        for name in pipelines:
            print(f"[{ds.name}/{opts.split}] {name} ...", file=sys.stderr, flush=True)
            per_query[condition_name(name)] = {}
            ds_records.append(run_one(ds, name, opts, per_query[condition_name(name)]))
        if opts.baseline in per_query:
            tests = significance(per_query, opts.baseline)
            for r in ds_records:
                r["is_baseline"] = r["pipeline"] == opts.baseline
                if r["pipeline"] in tests:
                    r["significance"] = tests[r["pipeline"]]
        out_dir = opts.output / ds.name
        plots = _dataset_plots(ds_records, out_dir)
        for r in ds_records:
            r["dataset_plots"] = [f"../{p}" for p in plots]
            write_json(out_dir / r["pipeline"] / "metrics.json", r)
            (out_dir / r["pipeline"] / "report.md").write_text(_report(r), encoding="utf-8")
        records += ds_records
    opts.output.mkdir(parents=True, exist_ok=True)
    write_json(opts.output / "summary.json", records)
    table = summary_table(records)
    text = table + "\n"
    if opts.baseline:
        text += (f"\nvs baseline: nDCG@10 difference from `{opts.baseline}` on the same queries, paired t-test p-value. "
                 f"Plots per dataset: <dataset>/stage_recall.png, <dataset>/stage_latency.png.\n")
    checks = check_expected(records, expected) if expected else []
    if expected:
        write_json(opts.output / "expected.json", checks)
        text += "\n## Expected figures (regression check)\n\n" + _md_table(
            ["dataset", "condition", "metric", "expected", "tolerance", "observed", "status"],
            [[c["dataset"], c["condition"], c["metric"], c["expected"], c["tolerance"], c["observed"], c["status"]]
             for c in checks]) + "\n"
    (opts.output / "summary.md").write_text(text, encoding="utf-8")
    return records, checks
