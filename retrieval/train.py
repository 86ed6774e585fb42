"""Train every stage of the full pipeline — BM25 >> hybrid LoRA dense >> LoRA reranker — from one call.

``build_pipeline`` (and ``python -m retrieval train``):

1. **BM25**: the Lucene index; with judgements, k1 and b grid-searched on the training queries (kept at
   the start values unless the gain is significant, see ``BM25.fit``).
2. **Dense**: the base model's document index and a *query-side* LoRA adapter (documents keep the base
   vectors: nothing is re-encoded). Its loss is a softmax over every document of the corpus, so BM25's
   hard negatives, and every other document, are negatives. The stage runs in hybrid mode: BM25's
   candidates plus the index's own nearest neighbours, fused with BM25's score.
3. **Rerank**: a LoRA cross-encoder (MiniLM + a new head) trained with hard negatives pooled from BM25 and
   the trained dense stage; it reorders the dense stage's top candidates and is fused with their score.

Settings are chosen without the evaluated split: the dense fusion weight, the rerank depth and the rerank
fusion weight on training queries held out of both adapters' training (the same seeded slice). With
``corpus_only`` there are no judgements: pseudo-queries made from the documents train both adapters, and
the fusion weights (equal) and rerank depth (20) are a rule fixed in advance.

Trained adapters are cached by data and settings under the cache folder, so building again is fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .types import Corpus, Qrels, Queries
from .util import default_cache_dir, read_json, write_json


@dataclass
class PipelineSettings:
    """How ``build_pipeline`` trains and composes the three stages."""

    corpus_only: bool = False
    bm25_k: int = 1000                 # BM25 candidates handed to the dense stage
    bm25_fit: bool = True              # grid-search k1/b on the training queries (not with corpus_only)
    dense_factory: str = "Flat"
    dense_k: int = 100                 # candidates the dense stage hands to the reranker
    neighbours: int = 100              # the index's own nearest neighbours added to BM25's candidates
    dense_epochs: int | None = None    # None: encoders.train.default_settings (query 8, corpus-query 4)
    rerank_epochs: int = 3
    rerank_depths: tuple[int, ...] = (10, 20, 30)
    rerank_max_items: int | None = None  # None: all judged pairs; corpus_only: 800 pseudo-queries
    rerank_negatives: tuple[str, ...] = ("bm25",)  # first stages the reranker's hard negatives come from:
                                       # "bm25" and/or "dense" (the trained dense stage)
    fit_queries: int = 120             # held-out training queries used to choose weights and depth
    corpus_rerank_depth: int = 20      # corpus_only: the rule fixed in advance
    dense_model: str | None = None     # bi-encoder: HF id or folder (default: the packaged all-MiniLM-L6-v2)
    rerank_model: str | None = None    # cross-encoder backbone: HF id or folder (default: the same MiniLM)
    rerank_precision: str = "auto"
    seed: int = 0

    def __post_init__(self):
        self.dense_model = str(self.dense_model) if self.dense_model else None
        self.rerank_model = str(self.rerank_model) if self.rerank_model else None
        self.rerank_depths = tuple(int(d) for d in self.rerank_depths)
        self.rerank_negatives = tuple(self.rerank_negatives)
        if not self.rerank_negatives or set(self.rerank_negatives) - {"bm25", "dense"}:
            raise ValueError(f"rerank_negatives must name 'bm25' and/or 'dense', got {self.rerank_negatives}")
        for name in ("bm25_k", "dense_k", "neighbours", "rerank_epochs", "fit_queries", "corpus_rerank_depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.rerank_depths or min(self.rerank_depths) < 1:
            raise ValueError(f"rerank_depths must be positive integers, got {self.rerank_depths}")
        if max(self.rerank_depths) > self.dense_k:
            raise ValueError(f"the deepest rerank depth ({max(self.rerank_depths)}) exceeds the dense stage's "
                             f"k ({self.dense_k}): the reranker can only see what the dense stage hands on")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rerank_depths"] = list(self.rerank_depths)
        d["rerank_negatives"] = list(self.rerank_negatives)
        return d


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir()


def bm25_stage(corpus: Corpus, cache_dir=None, k: int = 1000, threads: int | None = None):
    """The Lucene BM25 stage over ``corpus`` (index cached by corpus checksum). Returns (stage, built_now)."""
    from .stages.bm25 import BM25

    return BM25.from_corpus(corpus, cache_dir=_cache_root(cache_dir) / "bm25", k=k, threads=threads)


def base_index(encoder, corpus: Corpus, factory: str = "Flat", cache_dir=None):
    """The base model's document index (cached by corpus, encoder and factory): (index, built_now, folder)."""
    from .stages.dense import document_index

    return document_index(encoder, corpus, factory, cache_dir=_cache_root(cache_dir) / "dense")


def dense_adapter(mode: str, corpus: Corpus, queries: Queries | None, qrels: Qrels | None, index,
                  epochs: int | None = None, cache_dir=None, bm25=None, split: str = "train", model: str | None = None):
    """A bi-encoder with a LoRA adapter trained for ``mode`` (see ``encoders.train.train_dense``), cached by
    data and settings. Returns (encoder, training info)."""
    from encoders.bi_encoder import BiEncoder
    from encoders.train import default_settings, train_dense

    enc = BiEncoder(model)
    settings = default_settings(mode, epochs)
    labelled = mode in ("query", "supervised")
    data = ({"queries": sorted(queries.items()), "qrels": sorted((q, sorted(d.items())) for q, d in qrels.items())}
            if labelled else {"pseudo": "title/sentence pseudo-queries, seed 0"})
    key = _key({"mode": mode, "corpus": corpus.fingerprint(), **data, "encoder": enc.fingerprint("document"),
                "settings": settings.to_dict()})
    root = _cache_root(cache_dir) / "adapters" / f"dense-{mode}-{key}"
    if (root / "retrieval_config.json").is_file():
        return BiEncoder.load(root), read_json(root / "train_result.json", "training result")
    enc, result = train_dense(mode, corpus, queries if labelled else None, qrels if labelled else None,
                              settings, enc, index, bm25)
    enc.save(root, overwrite=True)
    info = {"split": split if labelled else "none (pseudo-queries from the corpus)", "cached_at": str(root),
            **result.to_dict()}
    write_json(root / "train_result.json", info)
    return enc, info


def rerank_examples(corpus: Corpus, queries: Queries | None, qrels: Qrels | None, seed: int = 0):
    from rerankers.train import training_examples

    mode = "supervised" if qrels is not None else "corpus"
    return training_examples(mode, corpus, queries, qrels, seed)


def reranker(corpus: Corpus, examples, first_stages, settings, negatives_from: dict, cache_dir=None,
             split: str = "train", model: str | None = None, precision: str = "auto"):
    """A cross-encoder with a LoRA adapter trained on ``examples``, negatives from ``first_stages``;
    cached by data, settings and the first stages (``negatives_from`` describes them). Every epoch's adapter
    is kept under ``epochs/`` for the per-epoch report. Returns (reranker, training info)."""
    from rerankers.cross_encoder import CrossEncoderReranker
    from rerankers.train import train_reranker

    model = CrossEncoderReranker(model, max_length=settings.max_length, precision=precision)
    payload = {"mode": settings.mode, "corpus": corpus.fingerprint(),
               "examples": [(e.qid, e.query, sorted(e.positives)) for e in examples],
               "base": model.base_fingerprint(), "settings": settings.to_dict()}
    if negatives_from != {"bm25": "default"}:  # plain BM25 keeps the key adapters trained before this option had
        payload["negatives_from"] = negatives_from
    key = _key(payload)
    root = _cache_root(cache_dir) / "adapters" / f"rerank-{settings.mode}-{key}"
    if (root / "retrieval_config.json").is_file():
        return CrossEncoderReranker.load(root, precision=precision), read_json(root / "train_result.json", "training result")
    from safetensors.torch import save_file

    states: dict[int, dict] = {}
    result = train_reranker(model, corpus, examples, first_stages, settings,
                            on_epoch=lambda epoch, state: states.__setitem__(epoch, state))
    model.save(root, overwrite=True)
    (root / "epochs").mkdir()
    for epoch, state in states.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / "epochs" / f"epoch-{epoch}.safetensors"))
    info = {"split": split if settings.mode == "supervised" else "none (pseudo-queries from the corpus)",
            "cached_at": str(root), "negatives_from": negatives_from, **result.to_dict()}
    write_json(root / "train_result.json", info)
    return model, info


def held_out(examples, settings, fit_queries: int) -> list[str]:
    """The training queries neither adapter takes a gradient step on (the shared seeded validation slice)."""
    from rerankers.train import split_examples

    return split_examples(examples, settings)[1][:fit_queries]


def rerank_settings(corpus_only: bool, epochs: int, max_items: int | None, seed: int = 0):
    from rerankers.train import RerankTrainSettings

    mode = "corpus" if corpus_only else "supervised"
    if max_items is None and corpus_only:
        max_items = 800  # ~7 minutes an epoch on 2 CPU cores
    return RerankTrainSettings(mode=mode, epochs=epochs, max_items=max_items, seed=seed)


@dataclass
class Built:
    """A trained pipeline and how it was made."""

    pipeline: object
    corpus: Corpus
    info: dict = field(default_factory=dict)


def build_pipeline(corpus: Corpus, queries: Queries | None = None, qrels: Qrels | None = None,
                   settings: PipelineSettings | None = None, cache_dir=None, threads: int | None = None,
                   split: str = "train", log=print) -> Built:
    """Train and compose BM25 >> hybrid LoRA dense >> LoRA reranker (see the module docstring)."""
    from encoders.bi_encoder import BiEncoder
    from encoders.train import split_queries

    from .stages.dense import Dense
    from .stages.fusion import Fusion, fit_weight
    from .stages.rerank import Rerank, fit_rerank

    settings = settings or PipelineSettings()
    if not settings.corpus_only and (queries is None or qrels is None):
        raise ValueError("training needs queries and qrels; with no judgements use corpus_only=True")
    if settings.corpus_only:
        queries = qrels = None
    t_start = time.perf_counter()
    info: dict = {"settings": settings.to_dict(), "split": "none (corpus only)" if settings.corpus_only else split,
                  "stages": {}}

    # 1. BM25
    log("[1/3] BM25 index" + ("" if settings.corpus_only or not settings.bm25_fit else " and k1/b fit on training queries"))
    bm25, built = bm25_stage(corpus, cache_dir, k=settings.bm25_k, threads=threads)
    bm25_info: dict = {"index_seconds": bm25.build_seconds, "index_reused": not built}
    if not settings.corpus_only and settings.bm25_fit:
        fit = bm25.fit(queries, qrels, save=False)
        bm25_info["fit"] = {"queries": sum(q in qrels for q in queries), **fit.to_dict()}
    bm25_info.update(k1=bm25.k1, b=bm25.b)
    info["stages"]["bm25"] = bm25_info

    # 2. dense: query-side adapter over the base document index
    log("[2/3] dense: base document index and query-side LoRA adapter")
    base = BiEncoder(settings.dense_model)
    index, index_built, _ = base_index(base, corpus, settings.dense_factory, cache_dir)
    mode = "corpus-query" if settings.corpus_only else "query"
    encoder, dense_train = dense_adapter(mode, corpus, queries, qrels, index, settings.dense_epochs, cache_dir, split=split,
                                         model=settings.dense_model)
    dense = Dense(encoder, index, mode="hybrid", k=settings.dense_k, neighbours=settings.neighbours)

    # 3. reranker: negatives from BM25 and the trained dense stage
    log(f"[3/3] reranker: LoRA cross-encoder, hard negatives from {' and '.join(settings.rerank_negatives)}")
    rs = rerank_settings(settings.corpus_only, settings.rerank_epochs, settings.rerank_max_items, settings.seed)
    examples = rerank_examples(corpus, queries, qrels, settings.seed)
    miners, negatives_from = [], {}
    if "bm25" in settings.rerank_negatives:
        miners.append(bm25)
        negatives_from["bm25"] = {"k1": bm25.k1, "b": bm25.b} if (bm25.k1, bm25.b) != (0.9, 0.4) else "default"
    if "dense" in settings.rerank_negatives:
        miners.append(Dense(encoder, index, mode="retrieve", k=rs.negatives_depth, name="dense-retrieve"))
        negatives_from["dense"] = encoder.fingerprint("query")
    ce, rerank_train = reranker(corpus, examples, miners, rs, negatives_from, cache_dir, split,
                                 settings.rerank_model, settings.rerank_precision)
    rerank = Rerank(ce, corpus, k=max(settings.rerank_depths), keep_rest=True)

    # fusion weights and depth
    if settings.corpus_only:
        dense.fusion = Fusion("weighted", (0.5, 0.5))
        rerank.k, rerank.fusion = settings.corpus_rerank_depth, Fusion("weighted", (0.5, 0.5))
        fitted_on = "nothing (no labels): equal weights and the fixed depth, chosen in advance"
        dense_grid, depth_rows, held = [], [], []
    else:
        # the slice both adapters held out: the dense trainer's split of its judged queries, with its settings
        ds = dense_train["settings"]
        dense_val = set(split_queries([q for q in queries if q in qrels and any(
            g > 0 and d in index for d, g in qrels[q].items())], ds["val_fraction"], ds["seed"])[1])
        held = [q for q in held_out(examples, rs, len(examples)) if q in dense_val][: settings.fit_queries]
        if not held:
            raise ValueError("no training query is held out of both adapters' training; cannot choose weights")
        fit_q = queries.subset(held)
        fit_qrels = {q: qrels[q] for q in held}
        log(f"choosing fusion weights and rerank depth on {len(held)} held-out training queries")
        first = bm25.search(fit_q)
        dense.fusion, dense_grid = fit_weight(first, dense.dense_scores(fit_q, first), fit_qrels)
        candidates = dense.search(fit_q, first)
        rerank.k, rerank.fusion, depth_rows = fit_rerank(rerank, fit_q, candidates, fit_qrels, settings.rerank_depths)
        fitted_on = f"{len(held)} training queries held out of both adapters' training"
    info["stages"]["dense"] = {"mode": "hybrid", "adapter": mode, "train": dense_train, "index_reused": not index_built,
                               "fusion": {**dense.fusion.to_dict(), "fitted_on": fitted_on, "grid": dense_grid}}
    info["stages"]["rerank"] = {"train": rerank_train, "depth": rerank.k,
                                "fusion": {**rerank.fusion.to_dict(), "fitted_on": fitted_on,
                                           "depths": [{k: v for k, v in r.items() if k != "grid"} for r in depth_rows]}}
    info["held_out"] = held
    info["train_seconds"] = dense_train["seconds"] + rerank_train["seconds"]
    info["build_seconds"] = time.perf_counter() - t_start
    from .stage import Pipeline

    return Built(Pipeline([bm25, dense, rerank], name="full"), corpus, info)
