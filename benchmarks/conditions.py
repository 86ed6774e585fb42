"""The benchmark's conditions: each name (``bm25``, ``hybrid-lora-query``, ``full``, ...) or a saved pipeline
folder becomes a pipeline ready to run, built from the dataset's training split and the run's pipeline
settings (``RunOptions.pipeline``, a ``PipelineSettings``), with what it cost to build.

Trained parts come from ``retrieval.pipeline.cache`` (cached by data and settings); every weight and depth is
chosen on training queries the adapters never took a gradient step on, never on the evaluated split.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from encoders.bi_encoder import BiEncoder
from retrieval.data import Dataset, load_dataset
from retrieval.evaluation import evaluate
from retrieval.pipeline.build import BuiltPipeline, budgeted_depths, build_pipeline, dense_held_out
from retrieval.pipeline.cache import base_index, bm25_stage, dense_adapter, with_inference
from retrieval.pipeline.folder import PipelineMismatch, is_pipeline_dir, load_pipeline, pipeline_config, save_pipeline
from retrieval.stage import Pipeline
from retrieval.stages.dense import Dense
from retrieval.stages.fusion import Fusion, fit_weight
from retrieval.stages.rerank import Rerank, fit_rerank

from .options import RunOptions


@dataclass
class Condition:
    """A pipeline ready to run, with what it cost to build."""

    pipeline: Pipeline
    index_seconds: float
    index_reused: bool
    settings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


Builder = Callable[[Dataset, RunOptions], Condition]


def _bm25_builder(backend: str | None, fit: bool = False) -> Builder:
    """BM25 alone; ``backend`` None: the run's pipeline setting (bm25s by default)."""

    def build(ds: Dataset, opts: RunOptions) -> Condition:
        stage, built_now = bm25_stage(ds.corpus, opts.cache_dir, k=opts.pipeline.bm25_k, threads=opts.threads,
                                      backend=backend or opts.pipeline.bm25_backend)
        extra: dict = {}
        if fit:
            train = load_dataset(ds.path, opts.train_split)
            result = stage.fit(train.queries, train.qrels, save=False)
            extra["fit"] = {"split": opts.train_split, "queries": len(train.queries), **result.to_dict()}
        settings = {"backend": stage.backend, "k": stage.k, "k1": stage.k1, "b": stage.b, "index": str(stage.index_dir)}
        return Condition(Pipeline([stage], name="bm25"), stage.build_seconds, not built_now, settings, extra)

    return build


def _trained_encoder(ds: Dataset, opts: RunOptions, mode: str, index) -> tuple[BiEncoder, dict]:
    """An encoder with a LoRA adapter trained for ``mode`` (``retrieval.pipeline.cache.dense_adapter``):

    - ``query``: query-only adapter on the training split's judgements, base document vectors;
    - ``supervised``: both sides, training split's judgements, BM25 hard negatives;
    - ``corpus`` / ``corpus-query``: pseudo-queries from the evaluated corpus (no judgements at all).
    """
    s = opts.pipeline
    train = load_dataset(ds.path, opts.train_split) if mode in ("query", "supervised") else None
    bm25 = (bm25_stage(ds.corpus, opts.cache_dir, threads=opts.threads, backend=s.bm25_backend)[0]
            if mode in ("supervised", "corpus") else None)
    epochs = s.dense_epochs if mode in ("query", "corpus-query") else opts.dense_both_epochs
    return dense_adapter(mode, ds.corpus, train.queries if train else None, train.qrels if train else None, index,
                         epochs, opts.cache_dir, bm25, opts.train_split, s.dense_model, s.dense_inference, s.seed,
                         s.dense_dropout)


def _dense_builder(adapter: str | None, hybrid: bool, fusion: Fusion | None = None) -> Builder:
    """The dense stage alone (``retrieve``) or after BM25 (``hybrid``); a hybrid's fusion is ``fusion`` when
    given (no labels needed), else its weight is fitted on the training split."""

    def build(ds: Dataset, opts: RunOptions) -> Condition:
        s = opts.pipeline
        enc = BiEncoder(s.dense_model)
        inference = with_inference(enc, s.dense_inference, ds.corpus, opts.cache_dir)  # both sides, zero-shot
        index, built_now, path = base_index(enc, ds.corpus, s.dense_factory, opts.cache_dir, opts.executor)
        extra: dict = {"inference": inference}
        if adapter is not None:
            enc, extra["train"] = _trained_encoder(ds, opts, adapter, index)
            extra["inference"] = extra["train"]["inference"]
            if adapter in ("supervised", "corpus"):  # documents are encoded with the adapter too: their own index
                index, built_now, path = base_index(enc, ds.corpus, s.dense_factory, opts.cache_dir, opts.executor)
        settings = {"factory": s.dense_factory, "index": str(path), "adapter": adapter, "inference": enc.inference,
                    "base_model": enc.base_model, "max_length": enc.max_length}
        if not hybrid:
            dense = Dense(enc, index, mode="retrieve", k=s.bm25_k)
            return Condition(Pipeline([dense], name="dense"), index.build_seconds, not built_now, settings, extra)
        bm25, bm25_built = bm25_stage(ds.corpus, opts.cache_dir, k=s.bm25_k, threads=opts.threads, backend=s.bm25_backend)
        dense = Dense(enc, index, mode="hybrid", k=s.bm25_k, neighbours=s.neighbours, fusion=fusion)
        if fusion is not None:
            extra["fusion"] = {"fitted_on": "nothing (fixed)", **fusion.to_dict()}
        else:
            # The fusion weight is chosen on training queries the adapter never took a gradient step on:
            # all of the training split for a zero-shot encoder, the adapter's held-out slice otherwise.
            train = load_dataset(ds.path, opts.train_split)
            fit_q = dense_held_out(train.queries, train.qrels, index, extra["train"]) if adapter else list(train.queries)
            fit_queries = train.queries.subset(fit_q)
            first = bm25.search(fit_queries)
            dense.fusion, grid = fit_weight(first, dense.dense_scores(fit_queries, first),
                                            {q: train.qrels[q] for q in fit_q})
            extra["fusion"] = {"fitted_on": f"{opts.train_split} ({len(fit_q)} queries)", **dense.fusion.to_dict(),
                               "grid": grid}
        settings.update(fusion=dense.fusion.to_dict(), bm25_k=bm25.k, neighbours=s.neighbours)
        return Condition(Pipeline([bm25, dense], name="hybrid"), index.build_seconds + bm25.build_seconds,
                         not (built_now or bm25_built), settings, extra)

    return build


_BUILT: dict[tuple, BuiltPipeline] = {}  # full pipelines built in this process, shared by `full` and `bm25>>ce`


def _pipeline_for(ds: Dataset, opts: RunOptions, corpus_only: bool, reranker: bool = False) -> BuiltPipeline:
    """BM25 >> hybrid LoRA dense >> LoRA reranker, trained on the training split (or, corpus-only, on
    pseudo-queries from the corpus): ``build_pipeline`` with the run's settings. ``reranker``: a corpus-only
    pipeline with its reranker even where the run's settings leave it out (``bm25>>ce-corpus`` needs one)."""
    settings = dataclasses.replace(opts.pipeline, corpus_only=corpus_only,
                                   corpus_reranker=corpus_only and (opts.pipeline.corpus_reranker or reranker))
    key = (str(ds.path), ds.corpus.fingerprint(), opts.train_split, str(opts.cache_dir), str(settings.to_dict()))
    if key not in _BUILT:
        log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        if corpus_only:
            _BUILT[key] = build_pipeline(ds.corpus, settings=settings, cache_dir=opts.cache_dir, threads=opts.threads,
                                         log=log, executor=opts.executor)
        else:
            train = load_dataset(ds.path, opts.train_split)
            _BUILT[key] = build_pipeline(ds.corpus, train.queries, train.qrels, settings, cache_dir=opts.cache_dir,
                                         threads=opts.threads, split=opts.train_split, log=log, executor=opts.executor)
    return _BUILT[key]


def _epoch_curve(ds: Dataset, stage: Rerank, first, train_info: dict) -> list[dict]:
    """nDCG@10 on the evaluated split after each training epoch, at the depth and fusion weight chosen for
    the kept epoch; ``first`` is the stage (or pipeline) before the reranker. A report only: nothing is chosen
    from it (the kept epoch is chosen on validation)."""
    from safetensors.torch import load_file

    reranker = stage.reranker
    folder = Path(train_info["cached_at"]) / "epochs"
    candidates = first.search(ds.queries)
    rows = []
    with reranker.adapter_states_tried():  # the kept epoch's weights, and the export made from them, come back
        for h in train_info["history"]:
            path = folder / f"epoch-{h['epoch']}.safetensors"
            if not path.is_file():
                continue
            reranker.set_adapter_state(load_file(str(path)))
            fused = stage.search(ds.queries, candidates)  # its stages["alone"] is the reranker before fusion
            alone = fused.stages.get("alone")  # absent at weight 0, some queries only with a skip margin
            if alone is None or len(alone) < len(ds.queries):
                alone = stage.scores(ds.queries, candidates)
            rows.append({"epoch": h["epoch"], "val_nDCG@10": h["val_nDCG@10"],
                         "nDCG@10 alone": evaluate(alone, ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"],
                         "nDCG@10 fused": evaluate(fused, ds.qrels, ["nDCG@10"]).aggregate["nDCG@10"],
                         "inference": reranker.inference})
    return rows


def _fusion_extra(info: dict) -> dict:
    f = info["fusion"]
    return {"fitted_on": f["fitted_on"], "depth": info["depth"], **{k: f[k] for k in ("method", "weights", "rrf_k", "norm")},
            "depths": f.get("depths", []), **({"budget": info["budget"]} if info.get("budget") else {})}


def _rerank_builder(corpus_only: bool) -> Builder:
    """BM25 >> the full pipeline's reranker (the dense stage left out), depth and weight fitted for BM25's
    candidates on the same held-out training queries (corpus-only: the rule fixed in advance)."""

    def build(ds: Dataset, opts: RunOptions) -> Condition:
        s = opts.pipeline
        full = _pipeline_for(ds, opts, corpus_only, reranker=True)
        bm25, _, full_rerank = full.pipeline.stages
        train_info = full.info["stages"]["rerank"]["train"]
        # keep_rest: BM25's candidates below the reranked top stay in the ranking, so recall is BM25's
        stage = Rerank(full_rerank.reranker, ds.corpus, k=max(s.rerank_depths), keep_rest=True)
        if not corpus_only:
            train = load_dataset(ds.path, opts.train_split)
            fit_q = train.queries.subset(full.info["held_out"])
            depths, budget = budgeted_depths(s, [bm25], stage, fit_q)
            depth, fusion, rows = fit_rerank(stage, fit_q, bm25.search(fit_q, k=max(s.rerank_depths)),
                                             {q: train.qrels[q] for q in fit_q}, depths=depths)
            fitted_on = full.info["stages"]["rerank"]["fusion"]["fitted_on"]
        else:
            # No labels: held-out pseudo-queries cannot choose here, because BM25 alone finds a title's own
            # document at rank 1 (on Medline it scored 1.0 and the fit switched the reranker off). So the
            # label-free rule fixed in advance: equal weights of the z-scored scores, the corpus-only depth.
            depth, fusion, rows, budget = s.corpus_rerank_depth, Fusion("weighted", (0.5, 0.5)), [], None
            fitted_on = f"nothing (no labels): equal weights and depth {depth}, fixed in advance"
        stage.k, stage.fusion = depth, fusion
        curve = _epoch_curve(ds, stage, bm25, train_info) if opts.rerank_epoch_curve else None
        extra = {"train": train_info, "train_seconds": train_info["seconds"],
                 "fusion": _fusion_extra({"depth": depth, "budget": budget,
                                          "fusion": {"fitted_on": fitted_on, **fusion.to_dict(),
                                                     "depths": [{k: v for k, v in r.items() if k != "grid"} for r in rows]}})}
        if curve:
            extra["epoch_curve"] = curve
        ce = stage.reranker
        settings = {"bm25_k": bm25.k, "rerank_k": depth, "fusion": fusion.to_dict(), "base_model": ce.base_model,
                    "max_length": ce.max_length, "precision": ce.precision, "inference": ce.inference,
                    "adapter": train_info["cached_at"]}
        return Condition(Pipeline([bm25, stage], name="bm25>>ce"), bm25.build_seconds, True, settings, extra)

    return build


def _full_builder(corpus_only: bool) -> Builder:
    """The full pipeline, saved to ``OUTDIR/<dataset>/<condition>/pipeline`` and evaluated as loaded back from
    that folder (so the folder a user keeps is the one measured)."""

    def build(ds: Dataset, opts: RunOptions) -> Condition:
        full = _pipeline_for(ds, opts, corpus_only)
        name = "full-corpus" if corpus_only else "full"
        folder = opts.output / ds.name / name / "pipeline"
        save_pipeline(full.pipeline, folder, ds.corpus, {**full.info, "dataset": str(ds.path)}, overwrite=True)
        pipe, _, _ = load_pipeline(folder, threads=opts.threads, corpus=ds.corpus, placer=_placer(opts))
        pipe.name = name
        return _saved_condition(pipe, full.info, folder, ds, opts)

    return build


def _placer(opts: RunOptions):
    """Where a saved folder's shards are opened: on the run's Ray cluster (``--ray-address``), else here."""
    return opts.executor.place if opts.executor is not None else None


def _saved_condition(pipe: Pipeline, info: dict, folder: Path, ds: Dataset, opts: RunOptions) -> Condition:
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
    return Condition(pipe, index_seconds, True, settings, extra)


def _saved_pipeline_builder(folder: Path) -> Builder:
    """A pipeline folder from ``python -m retrieval train``, evaluated as saved."""

    def build(ds: Dataset, opts: RunOptions) -> Condition:
        config = pipeline_config(folder)
        if config["corpus"]["fingerprint"] != ds.corpus.fingerprint():
            raise PipelineMismatch(f"{folder} indexes another corpus ({config['corpus']['documents']} documents) than "
                                   f"{ds.path} ({len(ds.corpus)}); evaluate it on the dataset it was trained for")
        pipe, _, config = load_pipeline(folder, threads=opts.threads, corpus=ds.corpus, placer=_placer(opts))
        return _saved_condition(pipe, config.get("info", {}), folder, ds, opts)

    return build


# What each condition needs besides the evaluated split, so that a run checks it all before any work.
NEEDS_TRAIN_SPLIT = {"bm25-fit", "dense-lora-query", "dense-lora", "hybrid", "hybrid-lora-query", "bm25>>ce", "full"}
USES_ENCODER = {"dense", "rrf", "dense-lora-query", "dense-lora", "dense-corpus", "dense-corpus-query", "hybrid",
                "hybrid-lora-query", "bm25>>ce", "bm25>>ce-corpus", "full", "full-corpus"}
USES_RERANKER = {"bm25>>ce", "bm25>>ce-corpus", "full", "full-corpus"}


def builder_for(name: str) -> Builder:
    if name in CONDITIONS:
        return CONDITIONS[name]
    if is_pipeline_dir(name):
        return _saved_pipeline_builder(Path(name))
    if Path(name).exists():
        raise ValueError(f"{name}: a folder without pipeline.json; a saved pipeline comes from `python -m retrieval train`")
    raise ValueError(f"unknown pipeline {name!r}; available: {', '.join(CONDITIONS)}, or a saved pipeline folder")


def condition_name(name: str) -> str:
    """The name a condition is reported under (a saved pipeline folder: its folder name)."""
    return name if name in CONDITIONS else Path(name).resolve().name


CONDITIONS: dict[str, Builder] = {
    "bm25": _bm25_builder(None),
    "bm25-lucene": _bm25_builder("lucene"),
    "bm25-rank": _bm25_builder("rank_bm25"),
    "bm25-fit": _bm25_builder(None, fit=True),
    "dense": _dense_builder(None, hybrid=False),
    "dense-lora-query": _dense_builder("query", hybrid=False),
    "dense-lora": _dense_builder("supervised", hybrid=False),
    "dense-corpus": _dense_builder("corpus", hybrid=False),
    "dense-corpus-query": _dense_builder("corpus-query", hybrid=False),
    "hybrid": _dense_builder(None, hybrid=True),
    "rrf": _dense_builder(None, hybrid=True, fusion=Fusion("rrf", (1.0, 1.0))),
    "hybrid-lora-query": _dense_builder("query", hybrid=True),
    "bm25>>ce": _rerank_builder(False),
    "bm25>>ce-corpus": _rerank_builder(True),
    "full": _full_builder(False),
    "full-corpus": _full_builder(True),
}
DESCRIPTIONS = {
    "bm25": "BM25 with the run's engine (--bm25-backend; bm25s by default: Java-free, Lucene's BM25 and terms), "
            "k1=0.9 b=0.4, title + text",
    "bm25-lucene": "Lucene BM25 via Pyserini, k1=0.9 b=0.4, title + text (the reference the other engines match)",
    "bm25-rank": "rank-bm25 (Java-free, slow), k1=0.9 b=0.4, Porter-stemmed word tokens",
    "bm25-fit": "BM25 (the run's engine) with k1 and b grid-searched on the training split",
    "dense": "all-MiniLM-L6-v2 zero-shot, exact (Flat) FAISS search",
    "dense-lora-query": "MiniLM with a query-only LoRA adapter trained on the training split; base document index",
    "dense-lora": "MiniLM with a LoRA adapter on both sides, trained on the training split with BM25 hard negatives",
    "dense-corpus": "MiniLM with a LoRA adapter on both sides trained on pseudo-queries from the corpus (no labels)",
    "dense-corpus-query": "MiniLM with a query-only LoRA adapter trained on pseudo-queries from the corpus (no labels, no re-encoding)",
    "hybrid": "BM25 top-k >> zero-shot dense: candidates + ANN neighbours, weighted fusion fitted on train",
    "rrf": "BM25 top-k >> zero-shot dense: candidates + ANN neighbours, reciprocal rank fusion (k=60, equal "
           "weights; no labels, no training: the floor of corpus-only adaptation)",
    "hybrid-lora-query": "BM25 top-k >> query-only LoRA dense, weighted fusion fitted on held-out training queries",
    "bm25>>ce": "BM25 >> the full pipeline's LoRA cross-encoder (MiniLM + new head, trained on the training split with "
                "hard negatives from BM25 and the trained dense stage by default, see --rerank-negatives); depth and "
                "BM25/reranker weight chosen on held-out training queries",
    "bm25>>ce-corpus": "BM25 >> the corpus-only pipeline's LoRA cross-encoder (pseudo-queries, no labels); equal "
                       "BM25/reranker weights and depth 20, fixed in advance",
    "full": "BM25 (k1/b fitted) >> hybrid dense with a query-side LoRA adapter >> LoRA cross-encoder; every weight and "
            "depth chosen on held-out training queries; evaluated as saved to and loaded from its folder",
    "full-corpus": "the pipeline trained with no labels: BM25 >> hybrid dense fusing BM25, a query-side adapter trained "
                   "on pseudo-queries from the corpus and the base model with equal weights (the reranker only with "
                   "--corpus-reranker: equal weights, depth 20), all fixed in advance",
}
