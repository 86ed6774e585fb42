"""A trained pipeline laid out in shards, each held and searched on its own (threads here, one Ray actor each on a
cluster), ranking as the pipeline did.

``shard_pipeline`` turns the BM25 stage into a ``ShardedBM25`` (the same k1 and b, each shard scoring with the
collection's statistics) and the dense stage's index into a ``ShardedIndex`` (the same vectors, one trained template
for every shard); the encoder, the reranker and every weight and depth stay. With ``exact_vectors=False`` the dense
index (sharded or not) keeps only its codes and rescores candidates from them. ``build_pipeline`` does this after
training when ``PipelineSettings.shards`` > 1 or ``dense_exact_vectors`` is off (training and the choices on
held-out queries use the unsharded stages with exact vectors), and ``python -m retrieval shard`` does it to a saved
pipeline folder.
"""

from __future__ import annotations

from ..index.faiss import FaissIndex
from ..index.sharded import ShardedIndex
from ..shards import Executor
from ..stage import Pipeline
from ..stages.bm25 import BM25
from ..stages.bm25_sharded import ShardedBM25
from ..stages.dense import Dense
from ..types import Corpus
from .cache import cache_root


def shard_pipeline(pipeline: Pipeline, corpus: Corpus, shards: int, cache_dir=None, threads: int | None = None,
                   executor: Executor | None = None, exact_vectors: bool = True) -> Pipeline:
    """``pipeline`` with its BM25 index and dense index cut into ``shards`` (see the module docstring); the sharded
    BM25 index is cached by corpus, shards, k1 and b. ``executor`` builds and holds the shards (default: here).
    ``exact_vectors=False``: the dense index (sharded or not) rescores from its own codes, its exact vectors dropped."""
    stages = []
    for stage in pipeline.stages:
        if isinstance(stage, Dense) and isinstance(stage.index, FaissIndex) and shards == 1:
            if not exact_vectors:
                stage = Dense(stage.encoder, stage.index.without_vectors(), mode=stage.mode, k=stage.k,
                              fusion=stage.fusion, neighbours=stage.neighbours, name=stage.name,
                              base_ensemble=stage.base_ensemble)
        elif shards == 1:
            pass
        elif isinstance(stage, BM25):
            if stage.backend != "bm25s":
                raise ValueError(f"{stage.name}: a sharded BM25 stage is a bm25s index (each shard scores with the "
                                 f"collection's statistics); this pipeline's BM25 is {stage.backend!r}: train it "
                                 f"with --bm25-backend bm25s to shard it")
            name = stage.name
            stage, _ = ShardedBM25.from_corpus(corpus, shards, cache_root(cache_dir) / "bm25", k=stage.k, k1=stage.k1,
                                               b=stage.b, threads=threads, executor=executor)
            stage.name = name
        elif isinstance(stage, Dense) and isinstance(stage.index, FaissIndex):
            rows = [r for r, d in enumerate(stage.index.ids) if d is not None]
            index = ShardedIndex.build(stage.index.vectors[rows], [stage.index.ids[r] for r in rows],
                                       stage.index.factory, shards, encoder_fingerprint=stage.index.encoder_fingerprint,
                                       encoder_info=stage.index.encoder_info, executor=executor,
                                       exact_vectors=exact_vectors and stage.index.exact_vectors,
                                       ef_construction=stage.index.params["ef_construction"],
                                       ef_search=stage.index.params["ef_search"], nprobe=stage.index.params["nprobe"])
            stage = Dense(stage.encoder, index, mode=stage.mode, k=stage.k, fusion=stage.fusion,
                          neighbours=stage.neighbours, name=stage.name, base_ensemble=stage.base_ensemble)
        stages.append(stage)
    return Pipeline(stages, name=pipeline.name)
