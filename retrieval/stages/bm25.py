"""BM25 first-pass retrieval over one of three engines:

- ``bm25s`` (default): Java-free and in memory, Lucene's BM25 over an analyzer that gives Lucene's terms; the
  choice for corpora that do not change (it rebuilds its matrix on a write) and fit in memory;
- ``lucene``: Lucene through Pyserini (Java 21): incremental writes in place (the search service's domains
  that take many writes) and indexes larger than memory;
- ``rank_bm25``: Java-free and slow (pure Python), kept for comparison.

An index folder holds ``bm25_config.json`` (backend, k1, b, corpus fingerprint, build time, analyzer, the
checksum of every index file; sealed) beside the engine's own files. Documents are indexed as
``title + " " + text``, as in Pyserini's BEIR "flat" condition. ``fit`` tunes k1 and b by grid search and
saves them with the index.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ..evaluation import evaluate, paired_ttest
from ..stage import StageBase, as_queries, check_candidates, check_k
from ..types import Corpus, Document, Qrels, Queries, Ranking
from ..util import (CacheWarning, DamagedArtefact, atomic_dir, check_seal, default_cache_dir, file_checksums,
                    library_version, read_json, sealed, verify_files, write_json)
from ._bm25s import Bm25sEngine
from ._lucene import LuceneEngine
from ._rank_bm25 import RankBM25Engine

CONFIG_NAME = "bm25_config.json"
DEFAULT_K1_GRID = (0.6, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0)
DEFAULT_B_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9)


def _threads(threads: int | None) -> int:
    return max(1, threads or os.cpu_count() or 1)


# a new engine: one module + one line. bm25s: Java-free, in memory, the default for corpora that do not change;
# lucene: incremental writes in place (the search service's write-heavy domains) and indexes larger than memory.
_ENGINES = {"bm25s": Bm25sEngine, "lucene": LuceneEngine, "rank_bm25": RankBM25Engine}
DEFAULT_BACKEND = "bm25s"
BACKENDS = tuple(_ENGINES)


# ------------------------------------------------------------------------------------------- the stage
@dataclass
class FitResult:
    """What ``BM25.fit`` tried and chose."""

    metric: str
    k1: float
    b: float
    score: float
    default_score: float
    grid: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)  # the arg-max of the grid and its p-value against the start
    alpha: float = 0.05

    def to_dict(self) -> dict:
        return {"metric": self.metric, "k1": self.k1, "b": self.b, "score": self.score,
                "default_score": self.default_score, "best": self.best, "alpha": self.alpha, "grid": self.grid}


class IndexFolderFacts:
    """What a BM25 index folder's ``bm25_config.json`` (``self.config``) tells, for one index or a sharded one."""

    config: dict

    @property
    def corpus_fingerprint(self) -> str:
        return self.config["corpus_fingerprint"]

    @property
    def build_seconds(self) -> float:
        return float(self.config.get("build_seconds", 0.0))


class BM25(IndexFolderFacts, StageBase):
    """BM25 over a persistent index folder; ``search`` returns the top ``k`` per query.

    >>> bm25 = BM25.build(corpus, "indexes/scifact")          # Lucene via Pyserini
    >>> bm25 = BM25("indexes/scifact", k=1000)                 # load it again later
    >>> ranking = bm25.search({"q1": "protein folding"})
    """

    def __init__(
        self,
        index_dir: str | os.PathLike,
        k: int = 1000,
        k1: float | None = None,
        b: float | None = None,
        threads: int | None = None,
        name: str = "bm25",
        verify: bool = False,
    ):
        """Open the index in ``index_dir``. Its settings are checked against their seal; with ``verify``, every
        index file against the checksum recorded when it was built (``DamagedArtefact`` names the file)."""
        self.index_dir = Path(index_dir)
        self.config = read_json(self.index_dir / CONFIG_NAME, "BM25 index config (build one with BM25.build)")
        sealed_ = check_seal(self.config, self.index_dir / CONFIG_NAME, "the BM25 index's settings")
        if verify:
            if not (sealed_ and self.config.get("checksums")):
                raise DamagedArtefact(f"{self.index_dir}: {CONFIG_NAME} records no checksums (written by an older "
                                      f"version), so the index cannot be checked; build it again")
            verify_files(self.index_dir, self.config["checksums"], "BM25 index")
        backend = self.config.get("backend")
        if backend not in _ENGINES:
            raise ValueError(f"{self.index_dir}: unknown BM25 backend {backend!r} in {CONFIG_NAME}; expected one of {BACKENDS}")
        self.backend = backend
        self.k = check_k(k, name)
        self.k1 = float(self.config["k1"] if k1 is None else k1)
        self.b = float(self.config["b"] if b is None else b)
        _check_params(self.k1, self.b)
        self.name = name
        self.threads = _threads(threads)
        self._engine = _ENGINES[backend](self.index_dir, self.threads, self.config)

    def __repr__(self) -> str:
        return f"BM25({str(self.index_dir)!r}, backend={self.backend!r}, k={self.k}, k1={self.k1}, b={self.b})"

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        corpus: Corpus,
        index_dir: str | os.PathLike,
        backend: str = DEFAULT_BACKEND,
        k: int = 1000,
        k1: float = 0.9,
        b: float = 0.4,
        threads: int | None = None,
        overwrite: bool = False,
        store_raw: bool = False,
    ) -> "BM25":
        """Index ``corpus`` into ``index_dir`` (written to a temporary folder, then renamed)."""
        if backend not in _ENGINES:
            raise ValueError(f"unknown BM25 backend {backend!r}; choose one of {BACKENDS}")
        if not isinstance(corpus, Corpus):
            raise TypeError(f"BM25.build takes a Corpus, got {type(corpus).__name__}")
        if len(corpus) == 0:
            raise ValueError("cannot index an empty corpus")
        _check_params(k1, b)
        threads = _threads(threads)
        t0 = time.perf_counter()
        with atomic_dir(index_dir, overwrite=overwrite) as tmp:
            info = _ENGINES[backend].build(corpus, tmp, threads, k1, b, store_raw=store_raw)
            write_config(tmp, {
                "kind": "bm25",
                "backend": backend,
                "k1": k1,
                "b": b,
                "fitted": None,
                "contents": "title + ' ' + text",
                "num_docs": len(corpus),
                "corpus_fingerprint": corpus.fingerprint(),
                "build_seconds": time.perf_counter() - t0,
                "threads": threads,
                "library_version": library_version(),
                **info,
            })
        return cls(index_dir, k=k, threads=threads)

    @classmethod
    def from_corpus(
        cls,
        corpus: Corpus,
        backend: str = DEFAULT_BACKEND,
        cache_dir: str | os.PathLike | None = None,
        k: int = 1000,
        threads: int | None = None,
        **params,
    ) -> tuple["BM25", bool]:
        """Load the cached index for this exact corpus, or build it. Returns (stage, built_now)."""
        root = Path(cache_dir) if cache_dir else default_cache_dir() / "bm25"
        path = root / f"{backend}-{corpus.fingerprint()[:16]}"
        if path.exists():
            try:  # a cache entry is reused only when every file and setting is as it was written
                stage = cls(path, k=k, threads=threads, verify=True, **params)
                if stage.corpus_fingerprint != corpus.fingerprint():
                    raise DamagedArtefact(f"{path}: the cached index was built from another corpus")
                return stage, False
            except (DamagedArtefact, FileNotFoundError, ValueError) as e:
                warnings.warn(f"rebuilding the cached BM25 index: {e}", CacheWarning, stacklevel=2)
                shutil.rmtree(path)
        built = cls.build(corpus, path, backend=backend, k=k, threads=threads, overwrite=False)
        return (cls(path, k=k, threads=threads, **params) if params else built), True

    # ------------------------------------------------------------------ searching
    def search(
        self,
        queries: Queries,
        candidates: Ranking | None = None,
        k: int | None = None,
    ) -> Ranking:
        queries = as_queries(queries)
        k = check_k(k, self.name) or self.k
        if check_candidates(candidates, queries, self.name) is not None:
            raise ValueError(
                f"{self.name}: BM25 is a first-stage retriever and takes no candidates; put it first in the pipeline"
            )
        if len(queries) == 0:
            return Ranking({})
        qids = list(queries)
        return Ranking(self._engine.search(qids, [queries[q] for q in qids], k, self.k1, self.b))

    # ------------------------------------------------------------------ updating
    def update(self, add: Sequence[Document] = (), delete: Sequence[str] = ()) -> None:
        """Add or replace ``add`` and delete the ids in ``delete``, in the index folder.

        Lucene: in place, through Lucene's IndexWriter with the analyzer and field options of the build (scores
        equal those of an index built from scratch over the same documents, until deletions, which Lucene's
        statistics count until segments merge), then a commit. bm25s and rank-bm25: the new documents are
        analysed and the whole index is made again from every stored term list (cheap for tens of thousands
        of documents, not for millions: use Lucene for domains that take many writes). Searches of this index
        must not run while it updates (the search service holds a lock for that). The config's corpus
        checksum still names the corpus the index was built from.
        """
        for doc in add:
            if not isinstance(doc, Document):
                raise TypeError(f"{self.name}: update takes Document objects, got {type(doc).__name__}")
        self._engine.update([(d.id, d.contents) for d in add], [str(i) for i in delete], self.k1, self.b)

    def close(self) -> None:
        """Release the index writer (and Lucene's write lock), if ``update`` opened one."""
        self._engine.close()

    # ------------------------------------------------------------------ tuning
    def fit(
        self,
        queries: Queries,
        qrels: Qrels,
        k1_grid: Sequence[float] = DEFAULT_K1_GRID,
        b_grid: Sequence[float] = DEFAULT_B_GRID,
        metric: str = "nDCG@10",
        depth: int | None = None,
        alpha: float = 0.05,
        save: bool = True,
    ) -> FitResult:
        """Grid-search k1 and b on ``queries``/``qrels`` (a training split) for the best mean ``metric``.

        The current values stay unless the best setting beats them significantly on these queries
        (paired t-test over per-query scores, p < ``alpha``): BM25's surface is flat near its usual
        values, and a gain within the noise of the training queries does not carry to new ones.
        ``alpha=1.0`` takes the plain arg-max. With ``save`` the result is written to the index's config.
        """
        queries = as_queries(queries)
        judged = queries.subset(q for q in queries if q in qrels)
        if len(judged) == 0:
            raise ValueError("fit needs queries that have judgements in qrels; none of the given queries do")
        if depth is None:
            cut = re.search(r"@(\d+)", metric)
            depth = max(100, int(cut.group(1))) if cut else 1000
        start = (self.k1, self.b)
        pairs = [start] + [(k1, b) for k1 in k1_grid for b in b_grid if (k1, b) != start]
        for k1, b in pairs:
            _check_params(k1, b)
        qids = list(judged)
        texts = [judged[q] for q in qids]
        sub_qrels = {q: qrels[q] for q in qids}
        grid, per_query = [], []
        for k1, b in tqdm(pairs, desc=f"fit bm25 ({len(qids)} queries)", unit="setting"):
            ev = evaluate(Ranking(self._engine.search(qids, texts, depth, k1, b)), sub_qrels, [metric])
            grid.append({"k1": k1, "b": b, metric: ev.aggregate[metric]})
            per_query.append([ev.per_query[q][metric] for q in qids])
        best_i = max(range(len(grid)), key=lambda i: grid[i][metric])  # first best wins: the start on ties
        p_value = paired_ttest(per_query[best_i], per_query[0])[1] if best_i != 0 else 1.0
        chosen = grid[best_i] if best_i != 0 and p_value < alpha else grid[0]
        result = FitResult(metric, chosen["k1"], chosen["b"], chosen[metric], grid[0][metric], grid,
                           best={**grid[best_i], "p_value": p_value}, alpha=alpha)
        self.k1, self.b = float(chosen["k1"]), float(chosen["b"])
        if save:
            self.config.update(k1=self.k1, b=self.b, fitted={
                "metric": metric, "queries": len(qids), "score": chosen[metric], "start": list(start),
                "start_score": grid[0][metric], "best": result.best, "alpha": alpha,
            })
            self._engine.settings_changed(self.k1, self.b)  # bm25s keeps its matrix for the settings saved
            write_config(self.index_dir, self.config)
        return result


def write_config(folder: Path, config: dict) -> None:
    """Write ``bm25_config.json``: ``config`` with the checksum of every index file in ``folder``, sealed."""
    write_json(folder / CONFIG_NAME, sealed({**config, "checksums": file_checksums(folder, skip=(CONFIG_NAME,))}))


def _check_params(k1: float, b: float) -> None:
    if not (isinstance(k1, (int, float)) and k1 >= 0):
        raise ValueError(f"BM25 k1 must be a number >= 0, got {k1!r}")
    if not (isinstance(b, (int, float)) and 0 <= b <= 1):
        raise ValueError(f"BM25 b must be a number between 0 and 1, got {b!r}")
