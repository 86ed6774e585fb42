"""BM25 over a corpus cut into shards, each shard scoring its documents with the whole collection's statistics.

Building takes two passes; each shard's part of a pass can run anywhere (here, or as Ray tasks on a cluster:
``retrieval.distributed.build_sharded_bm25``), since the shards share nothing but the statistics:

1. ``analyze_shard``: a shard's documents are analysed (the bm25s engine's ``lucene-english`` terms), their terms
   written to the shard's folder, and the shard's statistics returned (documents, total length, and the number of
   its documents holding each term);
2. ``merge_statistics`` adds them up, and ``index_shard`` makes each shard's bm25s matrix with the collection's
   statistics (``collection.json``, see ``retrieval.stages._bm25s``): every document gets exactly the score one
   index over the whole corpus gives it.

A search asks every shard for its top ``k`` and merges them, so the ranking is one index's (up to the order of equal
scores at the cut). Folder layout: ``bm25_config.json`` (``"kind": "sharded-bm25"``, k1, b, the corpus fingerprint,
the collection's statistics, and per shard its folder, documents and the sha256 of its own ``bm25_config.json``;
sealed) and ``shard-000/``, ``shard-001/``, ... each a bm25s ``BM25`` index folder. Read-only: a write would
change every shard's statistics, so new documents mean building it again (the search service refuses writes).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

from ..shards import (LOCAL, Executor, Placer, Sharded, check_shard_entries, contiguous, local_placer, merge_top_k,
                      shard_entries, shard_folder)
from ..stage import StageBase, as_queries, check_candidates, check_k
from ..types import Corpus, Document, Queries, Ranking
from ..util import (CacheWarning, DamagedArtefact, atomic_dir, check_seal, default_cache_dir, library_version,
                    read_json, sealed, write_json)
from ._analysis import analyzer
from ._bm25s import Bm25sEngine
from ._tokens import TokenEngine
from .bm25 import BM25, CONFIG_NAME, IndexFolderFacts, _check_params, _threads, write_config

KIND = "sharded-bm25"


def analyze_shard(docs: Sequence[Document], folder: str | os.PathLike) -> dict:
    """Pass 1 for one shard: write its documents' terms into ``folder`` (created) and return its statistics."""
    analyze = analyzer(Bm25sEngine.ANALYZER)
    folder = Path(folder)
    folder.mkdir(parents=True)
    ids, tokens = [d.id for d in docs], [analyze(d.contents) for d in docs]
    TokenEngine._write(folder, ids, tokens)
    df: Counter = Counter()
    for terms in tokens:
        df.update(set(terms))
    return {"documents": len(ids), "total_length": sum(map(len, tokens)), "df": dict(df),
            "fingerprint": Corpus(docs).fingerprint()}


def merge_statistics(parts: Sequence[dict]) -> dict:
    """The collection's statistics from its shards' (``analyze_shard``)."""
    df: Counter = Counter()
    for part in parts:
        df.update(part["df"])
    return {"documents": sum(p["documents"] for p in parts), "total_length": sum(p["total_length"] for p in parts),
            "df": dict(df)}


def index_shard(folder: str | os.PathLike, collection: dict, k1: float, b: float, fingerprint: str,
                threads: int = 1) -> None:
    """Pass 2 for one shard: its bm25s matrix, scored with the ``collection``'s statistics (the document frequency
    of the shard's own terms is kept in ``collection.json``), and its sealed ``bm25_config.json``."""
    t0 = time.perf_counter()
    folder = Path(folder)
    engine = Bm25sEngine(folder, threads, {"analyzer": Bm25sEngine.ANALYZER})
    terms = {t for doc in engine.tokens for t in doc}
    Bm25sEngine.write_collection(folder, {"documents": collection["documents"],
                                          "total_length": collection["total_length"],
                                          "df": {t: collection["df"][t] for t in sorted(terms)}})
    engine._saved(folder, k1, b)  # made again from its terms, now with the collection's statistics
    write_config(folder, {
        "kind": "bm25", "backend": "bm25s", "k1": k1, "b": b, "fitted": None, "contents": "title + ' ' + text",
        "num_docs": len(engine.doc_ids), "corpus_fingerprint": fingerprint, "build_seconds": time.perf_counter() - t0,
        "threads": threads, "library_version": library_version(), "analyzer": Bm25sEngine.ANALYZER,
        "shard_of": {"documents": collection["documents"], "total_length": collection["total_length"]},
    })


def write_sharded_config(folder: Path, parts: Sequence[dict], collection: dict, k1: float, b: float,
                         corpus_fingerprint: str, build_seconds: float) -> None:
    """``bm25_config.json`` of a sharded index whose shard folders are written in ``folder``."""
    shards = shard_entries(folder, [p["documents"] for p in parts], CONFIG_NAME)
    write_json(folder / CONFIG_NAME, sealed({
        "kind": KIND, "backend": "bm25s", "k1": k1, "b": b, "contents": "title + ' ' + text",
        "num_docs": collection["documents"], "total_length": collection["total_length"],
        "corpus_fingerprint": corpus_fingerprint, "shards": shards, "build_seconds": build_seconds,
        "library_version": library_version(),
    }))


def is_sharded_bm25(path: str | os.PathLike) -> bool:
    config = Path(path) / CONFIG_NAME
    return config.is_file() and read_json(config, "BM25 index config").get("kind") == KIND


class ShardedBM25(IndexFolderFacts, Sharded, StageBase):
    """BM25 over shards that score with the collection's statistics; ``search`` merges their top ``k``.

    >>> bm25 = ShardedBM25.build(corpus, "indexes/scifact-4", shards=4)    # ranks as BM25.build(corpus, ...)
    >>> bm25 = ShardedBM25.load("indexes/scifact-4", placer=ray_placer(...))   # each shard on a Ray actor
    """

    backend = "bm25s"
    read_only = True

    def __init__(self, index_dir: str | os.PathLike, k: int = 1000, threads: int | None = None, name: str = "bm25",
                 verify: bool = False, placer: Placer | None = None):
        """Open a sharded index: its settings checked against their seal and each shard's config against the
        checksum recorded; each shard opened by ``placer`` (default: in this process), its files checked there
        with ``verify``."""
        self.index_dir = Path(index_dir)
        self.config = read_config(self.index_dir)
        self.k = check_k(k, name)
        self.k1, self.b = float(self.config["k1"]), float(self.config["b"])
        self.name = name
        self.threads = _threads(threads)
        openers = [functools.partial(BM25, str(self.index_dir / s["path"]), k=self.k, threads=1, verify=verify)
                   for s in self.config["shards"]]
        self.pool = (placer or local_placer)(openers)
        self.counts = [int(s["count"]) for s in self.config["shards"]]

    def __repr__(self) -> str:
        return f"ShardedBM25({str(self.index_dir)!r}, shards={len(self.counts)}, k={self.k}, pool={self.pool!r})"


    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, corpus: Corpus, index_dir: str | os.PathLike, shards: int = 2, k: int = 1000, k1: float = 0.9,
              b: float = 0.4, threads: int | None = None, overwrite: bool = False,
              executor: Executor | None = None) -> "ShardedBM25":
        """Cut ``corpus`` into ``shards`` contiguous parts and index them: both passes run one call per shard where
        ``executor`` runs work (default: in this process; ``RayExecutor``: Ray tasks, which must reach
        ``index_dir``'s folder), and the shards are then opened where it places them."""
        if not isinstance(corpus, Corpus):
            raise TypeError(f"ShardedBM25.build takes a Corpus, got {type(corpus).__name__}")
        _check_params(k1, b)
        executor = executor or LOCAL
        ids = list(corpus)
        ranges = contiguous(len(ids), shards)
        t0 = time.perf_counter()
        with atomic_dir(index_dir, overwrite=overwrite) as tmp:
            parts = executor.run(analyze_shard, [([corpus[d] for d in ids[r.start:r.stop]], str(tmp / shard_folder(i)))
                                                 for i, r in enumerate(ranges)])
            collection = merge_statistics(parts)
            executor.run(index_shard, [(str(tmp / shard_folder(i)), collection, k1, b, part["fingerprint"])
                                       for i, part in enumerate(parts)])
            write_sharded_config(tmp, parts, collection, k1, b, corpus.fingerprint(), time.perf_counter() - t0)
        return cls(index_dir, k=k, threads=threads, placer=executor.place)

    @classmethod
    def from_corpus(cls, corpus: Corpus, shards: int, cache_dir: str | os.PathLike | None = None, k: int = 1000,
                    k1: float = 0.9, b: float = 0.4, threads: int | None = None,
                    executor: Executor | None = None) -> tuple["ShardedBM25", bool]:
        """The cached sharded index of this corpus at ``k1``/``b``, or a new one (``build``). Returns (stage,
        built_now)."""
        executor = executor or LOCAL
        root = Path(cache_dir) if cache_dir else default_cache_dir() / "bm25"
        path = root / f"bm25s-{shards}shards-k1_{k1}-b_{b}-{corpus.fingerprint()[:16]}"
        if path.exists():
            try:
                stage = cls(path, k=k, threads=threads, verify=True, placer=executor.place)
                if stage.corpus_fingerprint == corpus.fingerprint() and (stage.k1, stage.b) == (k1, b):
                    return stage, False
                stage.close()
                raise DamagedArtefact(f"{path}: the cached index was built from another corpus or settings")
            except (DamagedArtefact, FileNotFoundError, ValueError) as e:
                warnings.warn(f"rebuilding the cached sharded BM25 index: {e}", CacheWarning, stacklevel=2)
                shutil.rmtree(path)
        return cls.build(corpus, path, shards, k=k, k1=k1, b=b, threads=threads, executor=executor), True

    # ------------------------------------------------------------------ searching
    def search(self, queries: Queries, candidates: Ranking | None = None, k: int | None = None) -> Ranking:
        queries = as_queries(queries)
        k = check_k(k, self.name) or self.k
        if check_candidates(candidates, queries, self.name) is not None:
            raise ValueError(f"{self.name}: BM25 is a first-stage retriever and takes no candidates; put it first in "
                             f"the pipeline")
        if len(queries) == 0:
            return Ranking({})
        per_shard = self.pool.broadcast("search", queries, None, k)
        return Ranking({q: dict(merge_top_k([r.scores.get(q, {}).items() for r in per_shard], k)) for q in queries})

    def update(self, add=(), delete=()) -> None:
        raise ValueError(f"{self.name}: a sharded BM25 index ({self.shards} shards) is read-only: its shards score "
                         f"with the whole collection's statistics; build it again with the new documents, or serve "
                         f"the domain from one BM25 index (lucene takes writes in place)")



def read_config(path: Path) -> dict:
    """A sharded BM25 index's ``bm25_config.json``, checked against its seal and every shard's config checksum."""
    config = read_json(path / CONFIG_NAME, "BM25 index config (build one with ShardedBM25.build)")
    if config.get("kind") != KIND:
        raise ValueError(f"{path}: {CONFIG_NAME} describes a {config.get('kind')!r} index, not a sharded BM25 index")
    check_seal(config, path / CONFIG_NAME, "the sharded BM25 index's settings")
    check_shard_entries(path, config["shards"], CONFIG_NAME)
    return config
