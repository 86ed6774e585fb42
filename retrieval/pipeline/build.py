"""Train every stage of the full pipeline — BM25 >> hybrid LoRA dense >> LoRA reranker — from one call.

``build_pipeline`` (and ``python -m retrieval train``):

1. **BM25**: the index (bm25s by default; ``bm25_backend="lucene"`` for domains that take many writes); with judgements, k1 and b grid-searched on the training queries (kept at
   the start values unless the gain is significant, see ``BM25.fit``).
2. **Dense**: the base model's document index and a *query-side* LoRA adapter (documents keep the base
   vectors: nothing is re-encoded). Its loss is a softmax over every document of the corpus, so BM25's
   hard negatives, and every other document, are negatives. The stage runs in hybrid mode: BM25's
   candidates plus the index's own nearest neighbours, fused with BM25's score.
3. **Rerank**: a LoRA cross-encoder (MiniLM + a new head) trained with hard negatives pooled from BM25 and
   the trained dense stage; it reorders the dense stage's top candidates and is fused with their score. With
   ``rerank_distill`` its loss also pulls each training group towards the first two stages' fused scores
   (``retrieval.pipeline.teacher``), so their weights are chosen before it trains.

Settings are chosen without the evaluated split: the dense fusion weight, the rerank depth and the rerank
fusion weight on training queries held out of both adapters' training (the same seeded slice). With a latency
budget (``rerank_budget_ms``) the depths are first timed on those queries, one query at a time through the whole
pipeline on the building machine, and only those within the budget are chosen from.

With ``corpus_only`` there are no judgements, so nothing can be chosen on queries; the rule fixed in advance
(README, "Corpus-only"): pseudo-queries made from the documents train the query-side dense adapter, and the
dense stage fuses three rankings with equal weights — BM25's, the adapted model's and the untouched base
model's (``Dense(base_ensemble=True)``), so an adapter that learned nothing leaves the zero-shot fusion of BM25
and the base model. The reranker is left out (it could not be shown to help without labels) unless
``corpus_reranker``; then it is trained on the pseudo-queries, fused with equal weights at the fixed depth.

Trained adapters are cached by data and settings (``retrieval.pipeline.cache``), so building again is fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from encoders.bi_encoder import BiEncoder
from encoders.train import validation_queries
from rerankers.cross_encoder import backbone_limits, check_keep_layers, check_max_length
from rerankers.train import RerankTrainSettings, added_pseudo_items, split_examples, training_examples

from ..index.faiss import FaissIndex
from ..lora.base import PACKAGED_ID, resolve_model
from ..lora.mining import SkipTop
from ..shards import Executor
from ..stage import Pipeline
from ..stages.dense import Dense
from ..stages.fusion import Fusion, fit_weight
from ..stages.rerank import Rerank, depths_within, fit_rerank, fit_skip
from ..types import Corpus, Qrels, Queries
from .cache import base_index, bm25_stage, dense_adapter, first_stage_facts, reranker, with_inference
from .settings import PipelineSettings
from .shard import shard_pipeline
from .teacher import RankingTeacher

MIN_FIT_QUERIES = 30  # fewer held-out queries than this to choose weights and depth on: the build warns


@dataclass
class BuiltPipeline:
    """A trained pipeline, its corpus, and how it was made (``info``: what each stage trained and chose)."""

    pipeline: Pipeline
    corpus: Corpus
    info: dict = field(default_factory=dict)


def dense_held_out(queries: Queries, qrels: Qrels, index, train_info: dict) -> list[str]:
    """The training queries a query-side dense adapter held out of its training (it never took a gradient step
    on them), from the settings it recorded: where its fusion weight can be chosen."""
    s = train_info["settings"]
    return validation_queries(queries, qrels, index.rows, s["val_fraction"], s["seed"])[1]


def fit_slice(queries: Queries, qrels: Qrels, index, dense_train: dict, examples, rerank: RerankTrainSettings,
              at_most: int) -> list[str]:
    """The training queries both adapters held out (the dense trainer's validation queries that the reranker of
    ``rerank``'s seed holds out too), at most ``at_most``: where weights and depth are chosen."""
    dense_val = set(dense_held_out(queries, qrels, index, dense_train))
    return [q for q in split_examples(examples, rerank)[1] if q in dense_val][:at_most]


def budgeted_depths(settings: PipelineSettings, first: list, rerank: Rerank, queries: Queries,
                    log=print) -> tuple[tuple[int, ...], dict | None]:
    """``settings.rerank_depths``, less those over ``settings.rerank_budget_ms`` behind the ``first`` stages (timed
    on ``queries``), and the record of the measurement (None without a budget)."""
    if settings.rerank_budget_ms is None:
        return settings.rerank_depths, None
    log(f"timing the rerank depths {list(settings.rerank_depths)} against the budget of "
        f"{settings.rerank_budget_ms:g} ms a query")
    depths, budget = depths_within(settings.rerank_budget_ms, settings.rerank_depths, first, rerank, queries)
    if not budget["met"]:
        log(f"warning: no rerank depth fits {settings.rerank_budget_ms:g} ms a query on this machine (depth "
            f"{depths[0]}: {budget['p50_ms'][str(depths[0])]:g} ms); the shallowest is used")
    return depths, budget


def build_pipeline(corpus: Corpus, queries: Queries | None = None, qrels: Qrels | None = None,
                   settings: PipelineSettings | None = None, cache_dir=None, threads: int | None = None,
                   split: str = "train", log=print, executor: Executor | None = None) -> BuiltPipeline:
    """Train and compose BM25 >> hybrid LoRA dense >> LoRA reranker (see the module docstring). ``executor``
    encodes the corpus and builds and holds the shards (``settings.shards``; default: this process; a
    ``retrieval.distributed.RayExecutor``: a Ray cluster)."""
    settings = settings or PipelineSettings()
    if not settings.corpus_only and (queries is None or qrels is None):
        raise ValueError("training needs queries and qrels; with no judgements use corpus_only=True")
    if settings.corpus_only:
        queries = qrels = None
    t_start = time.perf_counter()
    info: dict = {"settings": settings.to_dict(), "split": "none (corpus only)" if settings.corpus_only else split,
                  "stages": {}}
    # settings that can only be checked against the models and the corpus: before any work
    base = BiEncoder(settings.dense_model)
    FaissIndex.check_factory(settings.dense_factory, base.dim, len(corpus))
    resolve_model(settings.rerank_model)
    rs = settings.rerank_train_settings()
    if not settings.corpus_only or settings.corpus_reranker:  # the reranker's limits, from its config: no weights
        layers, positions = backbone_limits(settings.rerank_model)
        backbone = settings.rerank_model or PACKAGED_ID
        kept = check_keep_layers(rs.keep_layers, layers, backbone, name="rerank_keep_layers (--rerank-keep-layers)")
        rs.lora.check_layers(kept, name="rerank_lora_layers (--rerank-lora-layers)")
        check_max_length(rs.max_length, positions, backbone, name="rerank_max_length (--rerank-max-length)")

    # 1. BM25
    log("[1/3] BM25 index" + ("" if settings.corpus_only or not settings.bm25_fit else " and k1/b fit on training queries"))
    bm25, built = bm25_stage(corpus, cache_dir, k=settings.bm25_k, threads=threads, backend=settings.bm25_backend)
    bm25_info: dict = {"index_seconds": bm25.build_seconds, "index_reused": not built}
    if not settings.corpus_only and settings.bm25_fit:
        fit = bm25.fit(queries, qrels, save=False)
        bm25_info["fit"] = {"queries": sum(q in qrels for q in queries), **fit.to_dict()}
    bm25_info.update(backend=bm25.backend, k1=bm25.k1, b=bm25.b)
    info["stages"]["bm25"] = bm25_info

    # 2. dense: query-side adapter over the base document index
    log("[2/3] dense: base document index and query-side LoRA adapter")
    with_inference(base, settings.dense_inference, corpus, cache_dir, sides=("document",), log=log)
    index, index_built, _ = base_index(base, corpus, settings.dense_factory, cache_dir, executor)
    mode = "corpus-query" if settings.corpus_only else "query"
    encoder, dense_train = dense_adapter(mode, corpus, queries, qrels, index, settings.dense_epochs, cache_dir, split=split,
                                         model=settings.dense_model, inference=settings.dense_inference,
                                         seed=settings.seed, dropout=settings.dense_dropout)
    dense = Dense(encoder, index, mode="hybrid", k=settings.dense_k, neighbours=settings.neighbours,
                  base_ensemble=settings.corpus_only)
    dense_info = {"mode": "hybrid", "adapter": mode, "base_ensemble": dense.base_ensemble, "train": dense_train,
                  "index_reused": not index_built}
    info["stages"]["dense"] = dense_info
    stages = [bm25, dense]
    if settings.corpus_only:  # no labels: the rule fixed in advance (module docstring)
        fitted_on = "nothing (no labels): equal weights and the fixed depth, chosen in advance"
        dense.fusion = Fusion("weighted", (1 / 3,) * 3)
        dense_info["fusion"] = {**dense.fusion.to_dict(), "fitted_on": fitted_on, "grid": []}
        if not settings.corpus_reranker:  # the dense stage is the last: it ranks as deep as BM25 handed on
            log("[3/3] reranker: left out (corpus-only; --corpus-reranker adds it)")
            dense.k = max(settings.dense_k, settings.bm25_k)
            return _built(stages, corpus, info, t_start, [], settings, cache_dir, threads, executor, log)

    examples = training_examples("corpus" if settings.corpus_only else "supervised", corpus, queries, qrels, settings.seed)
    if settings.corpus_only:
        held = []
    else:
        # the dense stage's fusion weights (before the reranker trains: a teacher distils the fused scores), on the
        # slice both adapters held out: the dense trainer's validation queries that the reranker's held out too
        held = fit_slice(queries, qrels, index, dense_train, examples, rs, settings.fit_queries)
        if not held:
            raise ValueError("no training query is held out of both adapters' training; cannot choose weights")
        if len(held) < MIN_FIT_QUERIES:
            log(f"warning: only {len(held)} held-out training queries to choose the fusion weights and rerank depth "
                f"on; figures chosen on so few are noise (more judged training queries, or a larger val_fraction)")
        fit_q = queries.subset(held)
        fit_qrels = {q: qrels[q] for q in held}
        log(f"choosing the dense stage's fusion weights on {len(held)} held-out training queries")
        first = bm25.search(fit_q)
        dense.fusion, dense_grid = fit_weight(first, dense.dense_scores(fit_q, first), fit_qrels)
        fitted_on = f"{len(held)} training queries held out of both adapters' training"
        dense_info["fusion"] = {**dense.fusion.to_dict(), "fitted_on": fitted_on, "grid": dense_grid}

    # 3. reranker: negatives from BM25 and the trained dense stage
    log(f"[3/3] reranker: LoRA cross-encoder, hard negatives from {' and '.join(settings.rerank_negatives)}")
    miners, negatives_from = [], {}
    if "bm25" in settings.rerank_negatives:
        miners.append(bm25)
        negatives_from["bm25"] = first_stage_facts(bm25)
    if "dense" in settings.rerank_negatives:
        miners.append(SkipTop(Dense(encoder, index, mode="retrieve", k=rs.negatives_depth, name="dense-retrieve"),
                              settings.rerank_dense_skip))
        negatives_from["dense"] = {"query_encoder": encoder.fingerprint("query"), "skip": settings.rerank_dense_skip}
    # the first two stages' fused scores (or BM25's) as a distillation teacher or a residual base; a sentence
    # pseudo-query's positive is its document without that sentence: the scorer is told whose it is
    teacher = teacher_from = base = base_from = None
    if settings.rerank_distill or settings.rerank_residual:
        pseudo = {e.passage: min(e.positives) for e in added_pseudo_items(corpus, rs)}
        first_two = Pipeline([bm25, dense], name="first-stages")
        fused_from = {"bm25": first_stage_facts(bm25), "query_encoder": encoder.fingerprint("query"),
                      "fusion": dense.fusion.to_dict(), "k": dense.k, "neighbours": dense.neighbours}
    if settings.rerank_distill:
        teacher = RankingTeacher(first_two, corpus, passages=pseudo)
        teacher_from = fused_from
    if settings.rerank_residual:
        on_bm25 = settings.rerank_residual_base == "bm25"
        base = RankingTeacher(bm25 if on_bm25 else first_two, corpus, passages=pseudo, zscore=True)
        base_from = {**({"bm25": first_stage_facts(bm25)} if on_bm25 else fused_from), "zscore": True}
    ce, rerank_train = reranker(corpus, examples, miners, rs, negatives_from, cache_dir, split,
                                 settings.rerank_model, settings.rerank_precision, settings.rerank_inference,
                                 teacher=teacher, teacher_from=teacher_from, base=base, base_from=base_from)
    rerank = Rerank(ce, corpus, k=max(settings.rerank_depths), keep_rest=True)
    stages.append(rerank)

    # the reranker's fusion weight and depth (and, for a share of queries, the margin that skips the rest)
    skip = None
    if settings.corpus_only:
        rerank.k, rerank.fusion = settings.corpus_rerank_depth, Fusion("weighted", (0.5, 0.5))
        depth_rows, budget = [], None
        if settings.rerank_share < 1:
            log(f"note: rerank_share={settings.rerank_share:g} does not apply without labels: every query is reranked")
        if settings.rerank_budget_ms is not None:
            log(f"note: the latency budget does not apply without labels: the rerank depth is fixed in advance "
                f"(corpus_rerank_depth={settings.corpus_rerank_depth})")
    else:
        depths, budget = budgeted_depths(settings, [bm25, dense], rerank, fit_q, log)
        log(f"choosing the rerank depth and weight on the same {len(held)} held-out training queries")
        candidates = dense.search(fit_q, first)
        rerank.k, rerank.fusion, depth_rows = fit_rerank(rerank, fit_q, candidates, fit_qrels, depths)
        if not rerank.runs_reranker:
            log("note: on the held-out training queries the reranker's best fusion weight is 0 (fused, it added "
                "nothing there): the pipeline does not run it and answers at its first two stages' cost; for a "
                "reranker that adds, train again with another --seed")
        elif settings.rerank_share < 1:
            skip = fit_skip(rerank, fit_q, candidates, settings.rerank_share)
            log(f"the reranker runs where the first two stages' best candidate leads by at most {skip['margin']} "
                f"standard deviations: {skip['reranked']} of {len(fit_q)} held-out queries" if skip["margin"] is not None
                else f"rerank_share={settings.rerank_share:g} leaves every held-out query to the reranker")
    info["stages"]["rerank"] = {"train": rerank_train, "depth": rerank.k,
                                "fusion": {**rerank.fusion.to_dict(), "fitted_on": fitted_on,
                                           "depths": [{k: v for k, v in r.items() if k != "grid"} for r in depth_rows]}}
    if skip:
        info["stages"]["rerank"]["skip"] = skip
    if budget:
        info["stages"]["rerank"]["budget"] = budget
    return _built(stages, corpus, info, t_start, held, settings, cache_dir, threads, executor, log)


def _built(stages: list, corpus: Corpus, info: dict, t_start: float, held: list[str], settings: PipelineSettings,
           cache_dir, threads, executor, log) -> BuiltPipeline:
    """The pipeline of ``stages`` (cut into ``settings.shards``) with its build record: the held-out queries and
    the time spent."""
    pipeline = Pipeline(stages, name="full")
    if settings.shards > 1 or not settings.dense_exact_vectors:
        log(f"laying out the indexes: {settings.shards} shard(s), dense candidates rescored from "
            f"{'exact vectors' if settings.dense_exact_vectors else 'the index codes'}")
        pipeline = shard_pipeline(pipeline, corpus, settings.shards, cache_dir, threads, executor,
                                  settings.dense_exact_vectors)
    info["held_out"] = held
    info["train_seconds"] = sum(s["train"]["seconds"] for s in info["stages"].values() if s and "train" in s)
    info["build_seconds"] = time.perf_counter() - t_start
    return BuiltPipeline(pipeline, corpus, info)
