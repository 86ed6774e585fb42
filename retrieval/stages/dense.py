"""The dense stage: a (LoRA-adapted) bi-encoder over a FAISS index.

Modes:
- ``retrieve``: the index's approximate top-k for each query;
- ``rescore``: score the given candidates from their stored vectors (no document is re-encoded);
- ``hybrid``: score the candidates and the index's own top-k neighbours, then fuse those dense scores
  with the scores the candidates came with (``Fusion``: RRF or a weighted sum of normalised scores).

``base_ensemble`` (hybrid, a query-side adapter only): the base model's own ranking — queries encoded as the
documents are, with no adapter, and its own neighbours — is fused as a third ranking beside the adapted one,
so the fusion takes (incoming, adapted, base). It costs one more query encoding and neighbour search; it is
how a corpus-only adapter, trained without labels, is used beside the untouched model it came from.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

from ..index.faiss import FaissIndex, IndexMismatch
from ..shards import LOCAL, Executor
from ..stage import StageBase, as_queries, check_candidates, check_k
from ..types import Corpus, Queries, Ranking
from ..util import CacheWarning, DamagedArtefact, default_cache_dir
from .fusion import Fusion

MODES = ("retrieve", "rescore", "hybrid")


def document_index(encoder, corpus: Corpus, factory: str = "Flat", cache_dir: str | os.PathLike | None = None,
                   executor: Executor | None = None, **index_kwargs) -> tuple[FaissIndex, bool, Path]:
    """Load the cached index of ``corpus`` for this encoder's document side, or encode and build it.

    Returns (index, built_now, folder). The cache key is the corpus checksum, the encoder's document
    fingerprint (base weights + document-side adapter) and the factory string, so a query-only adapter
    reuses the base model's index untouched. ``executor`` encodes the documents (default: here; a
    ``retrieval.distributed.RayExecutor``: Ray Data over a pool of actors, the same vectors).
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "dense"
    fp = encoder.fingerprint("document")
    key = f"{corpus.fingerprint()[:16]}-{fp.replace(':', '_').replace('+', '-')}-{factory.replace(',', '_')}"
    path = root / key
    if path.exists():
        try:  # a cache entry is reused only when every file and setting is as it was written
            return FaissIndex.load(path, encoder_fingerprint=fp, require_seal=True), False, path
        except (DamagedArtefact, FileNotFoundError, ValueError) as e:
            warnings.warn(f"rebuilding the cached document index: {e}", CacheWarning, stacklevel=2)
            shutil.rmtree(path)
    t0 = time.perf_counter()
    ids = list(corpus)
    vectors = (executor or LOCAL).encode_documents(encoder, [corpus[d] for d in ids])
    encode_seconds = time.perf_counter() - t0
    index = FaissIndex.build(vectors, ids, factory=factory, encoder_fingerprint=fp,
                             encoder_info={"base_model": encoder.base_model, "adapter": encoder.active_adapter,
                                           "max_length": encoder.max_length, "encode_seconds": encode_seconds},
                             **index_kwargs)
    index.build_seconds += encode_seconds
    index.save(path, overwrite=True)
    return index, True, path


class Dense(StageBase):
    """Dense retrieval / rescoring / hybrid fusion with one encoder and one FAISS index."""

    def __init__(self, encoder, index: FaissIndex, mode: str = "hybrid", k: int = 100,
                 fusion: Fusion | None = None, neighbours: int = 100, name: str = "dense",
                 check_index: bool = True, base_ensemble: bool = False):
        if mode not in MODES:
            raise ValueError(f"dense mode must be one of {MODES}, got {mode!r}")
        if base_ensemble and mode != "hybrid":
            raise ValueError(f"{name}: base_ensemble fuses three rankings, which only mode='hybrid' does (got {mode!r})")
        if base_ensemble and not encoder.documents_by_base():
            raise ValueError(f"{name}: base_ensemble needs the base model on the document side (a query-side adapter "
                             f"or none); this encoder's documents are encoded as {encoder.fingerprint('document')}")
        if check_index and index.encoder_fingerprint is not None:
            fp = encoder.fingerprint("document")
            if fp != index.encoder_fingerprint:
                raise IndexMismatch(f"the index was built with encoder {index.encoder_fingerprint}, this encoder "
                                    f"encodes documents as {fp}; rebuild the index or use the matching adapter")
        self.encoder, self.index, self.mode, self.base_ensemble = encoder, index, mode, base_ensemble
        self.k = check_k(k, name)
        self.fusion = fusion or Fusion("weighted", (1 / 3,) * 3 if base_ensemble else (0.5, 0.5))
        self.neighbours = check_k(neighbours, name)  # ANN neighbours added to the candidates in hybrid mode
        self.name = name

    def __repr__(self) -> str:
        ensemble = ", base_ensemble=True" if self.base_ensemble else ""
        return f"Dense(mode={self.mode!r}, k={self.k}, factory={self.index.factory!r}, fusion={self.fusion}{ensemble})"

    def search(self, queries: Queries, candidates: Ranking | None = None, k: int | None = None) -> Ranking:
        queries = as_queries(queries)
        k = check_k(k, self.name) or self.k
        candidates = check_candidates(candidates, queries, self.name)
        if self.mode in ("rescore", "hybrid") and candidates is None:
            raise ValueError(f"{self.name}: mode {self.mode!r} needs candidates from an earlier stage "
                             f"(e.g. BM25(...) >> Dense(..., mode={self.mode!r})); use mode='retrieve' to run alone")
        if len(queries) == 0:
            return Ranking({})
        qids = list(queries)
        qv = self.encoder.encode_queries([queries[q] for q in qids])
        if self.mode == "retrieve":
            hits = self.index.search(qv, k)
            return Ranking({q: dict(h) for q, h in zip(qids, hits)})
        dense_ranking = self._dense_scores(qids, qv, candidates, self.mode == "hybrid")
        if self.mode == "rescore":
            return dense_ranking.top_k(k)
        first = Ranking({q: candidates.scores.get(q, {}) for q in qids})
        rankings = [first, dense_ranking]
        if self.base_ensemble:
            rankings.append(self._base_scores(qids, [queries[q] for q in qids], candidates))
        return self.fusion(rankings).top_k(k)

    def dense_scores(self, queries: Queries, candidates: Ranking) -> Ranking:
        """Dense scores of the candidates plus the ANN neighbours: the ranking hybrid mode fuses.

        Exposed so a fusion weight can be fitted on training queries (``fusion.fit_weight``).
        """
        queries = as_queries(queries)
        qids = list(queries)
        qv = self.encoder.encode_queries([queries[q] for q in qids])
        return self._dense_scores(qids, qv, candidates, True)

    def base_scores(self, queries: Queries, candidates: Ranking) -> Ranking:
        """The untouched base model's scores of the candidates plus its own neighbours: the third ranking that
        ``base_ensemble`` fuses (queries encoded as the documents are: by the base model)."""
        queries = as_queries(queries)
        qids = list(queries)
        return self._base_scores(qids, [queries[q] for q in qids], candidates)

    def _base_scores(self, qids, texts, candidates: Ranking) -> Ranking:
        return self._dense_scores(qids, self.encoder.encode_documents(texts), candidates, True)

    def _dense_scores(self, qids, qv, candidates: Ranking, add_neighbours: bool) -> Ranking:
        neighbours = self.index.search(qv, self.neighbours) if add_neighbours else [[] for _ in qids]
        pools = []
        for q, hits in zip(qids, neighbours):
            given = candidates.scores.get(q, {})
            pools.append(list(given) + [d for d, _ in hits if d not in given])
        # one call for every query: a sharded index asks each of its shards once
        return Ranking(dict(zip(qids, self.index.score_batch(qv, pools))))
