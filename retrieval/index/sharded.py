"""Several FAISS indexes searched as one: a corpus's vectors cut into shards, each a ``FaissIndex``.

Every shard is built from one trained, empty index (``FaissIndex.empty_copy``), so an IVF index's shards share
one coarse quantizer (and PQ codebooks, PCA matrix), and scores from different shards are comparable. A search
asks every shard for its own top ``k`` and merges them: for an exact index (Flat, SQ) the merged list equals the
single index's top ``k``; for HNSW and IVF each shard searches approximately, as a single index would.

Where the shards live is a ``retrieval.shards.ShardPool``: in this process (``LocalShards``, the default) or
one per Ray actor (``retrieval.distributed``); this module never imports Ray.

Folder layout: ``index_config.json`` (``"kind": "sharded-faiss"``, factory, dimension, encoder fingerprint, and
per shard its folder, document count and the sha256 of the shard's own ``index_config.json``, which holds the
checksums of the shard's files; sealed) and ``shard-000/``, ``shard-001/``, ... each a ``FaissIndex`` folder.
A shard index is read-only: documents are added by building it again (the search service refuses writes).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..shards import (LOCAL, Executor, LocalShards, Placer, Sharded, ShardPool, check_shard_entries, contiguous,
                      local_placer, merge_top_k, shard_entries, shard_folder)
from ..util import (DamagedArtefact, atomic_dir, check_seal, library_version, read_json, sealed,
                    write_json)
from .faiss import CONFIG_NAME, FaissIndex, _check_vectors, check_encoder

KIND = "sharded-faiss"


def trained_template(factory: str, vectors: np.ndarray, train_sample: int = 100_000, seed: int = 0,
                     **kwargs) -> FaissIndex:
    """An empty ``factory`` index trained (where it needs training) on a sample of ``vectors``: the one every shard
    is copied from."""
    vectors = _check_vectors(vectors)
    template = FaissIndex(factory, vectors.shape[1], **kwargs)
    FaissIndex.check_factory(template.factory, template.dim, len(vectors))
    if not template.index.is_trained:
        template.train(vectors, sample=train_sample, seed=seed)
    return template


def build_shard(template: FaissIndex, vectors: np.ndarray, ids: Sequence[str]) -> FaissIndex:
    """One shard: a copy of the trained ``template`` holding ``vectors`` under ``ids``."""
    t0 = time.perf_counter()
    shard = template.empty_copy()
    shard.add(vectors, ids)
    shard.build_seconds = time.perf_counter() - t0
    return shard


class ShardedIndex(Sharded):
    """N FAISS shards searched as one index, with ``FaissIndex``'s read interface (``search``, ``score``,
    ``score_batch``, ``ids``, ``len``), so the dense stage takes either.

    >>> idx = ShardedIndex.build(vectors, doc_ids, factory="IVF256,Flat", shards=4, encoder_fingerprint=fp)
    >>> idx.save("index/")                             # shard-000/ ... shard-003/ and index_config.json
    >>> idx = ShardedIndex.load("index/", placer=ray_placer(...))   # each shard on a Ray actor
    """

    read_only = True

    def __init__(self, pool: ShardPool, factory: str, dim: int, encoder_fingerprint: str | None = None,
                 encoder_info: dict | None = None, params: dict | None = None, build_seconds: float = 0.0):
        self.pool = pool
        self.factory, self.dim = factory, int(dim)
        self.kind = "hnsw" if "HNSW" in factory.upper() else ("ivf" if "IVF" in factory.upper() else "flat")
        self.encoder_fingerprint, self.encoder_info = encoder_fingerprint, dict(encoder_info or {})
        self.params = dict(params or {})
        self.build_seconds = build_seconds
        self.counts = [int(n) for n in pool.broadcast("__len__")]

    def __repr__(self) -> str:
        return f"ShardedIndex({self.factory!r}, shards={len(self.counts)}, documents={len(self)}, pool={self.pool!r})"

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray, ids: Sequence[str], factory: str = "Flat", shards: int = 2,
              train_sample: int = 100_000, seed: int = 0, encoder_fingerprint: str | None = None,
              encoder_info: dict | None = None, executor: Executor | None = None, **kwargs) -> "ShardedIndex":
        """Cut ``vectors`` (row i is ``ids[i]``) into ``shards`` contiguous parts, train one template on a sample
        of all of them, and build each shard from it where ``executor`` places shards (default: in this process;
        ``retrieval.distributed.RayExecutor``: each shard built on, and kept by, its own Ray actor)."""
        vectors = _check_vectors(vectors)
        ids = [str(i) for i in ids]
        if len(ids) != len(vectors):
            raise ValueError(f"got {len(vectors)} vectors but {len(ids)} ids")
        t0 = time.perf_counter()
        template = trained_template(factory, vectors, train_sample, seed, encoder_fingerprint=encoder_fingerprint,
                                    encoder_info=encoder_info, **kwargs)
        openers = [functools.partial(build_shard, template, vectors[r.start:r.stop], ids[r.start:r.stop])
                   for r in contiguous(len(ids), shards)]
        pool = (executor or LOCAL).place(openers)
        return cls(pool, template.factory, template.dim, encoder_fingerprint, encoder_info, template.params,
                   time.perf_counter() - t0)

    @classmethod
    def from_shards(cls, parts: Sequence[FaissIndex], pool: ShardPool | None = None,
                    build_seconds: float | None = None) -> "ShardedIndex":
        """Shards built alike (one factory, dimension and encoder) as one index; ``pool``: where they are held
        (default: these objects, in this process)."""
        first = parts[0]
        for p in parts[1:]:
            if (p.factory, p.dim, p.encoder_fingerprint) != (first.factory, first.dim, first.encoder_fingerprint):
                raise ValueError(f"shards differ: {p.factory!r}/{p.dim}/{p.encoder_fingerprint} vs "
                                 f"{first.factory!r}/{first.dim}/{first.encoder_fingerprint}; build them from one template")
        return cls(pool or LocalShards(parts), first.factory, first.dim, first.encoder_fingerprint, first.encoder_info,
                   first.params, sum(p.build_seconds for p in parts) if build_seconds is None else build_seconds)

    # ------------------------------------------------------------------ searching
    def __len__(self) -> int:
        return sum(self.counts)

    def __contains__(self, doc_id: object) -> bool:
        return any(self.pool.broadcast("__contains__", doc_id))

    @property
    def ids(self) -> list[str]:
        """Every document id, shard by shard (one call to each shard: for checks, not for the search path)."""
        return [d for part in self.pool.broadcast("doc_ids") for d in part]

    def doc_ids(self) -> list[str]:
        return self.ids

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        queries = _check_vectors(queries, self.dim)
        if len(self) == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        per_shard = self.pool.broadcast("search", queries, int(k))
        return [merge_top_k([hits[i] for hits in per_shard], int(k)) for i in range(len(queries))]

    def score_batch(self, queries: np.ndarray, pools: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Exact scores of each query's ids from the shards' stored vectors; every shard scores the ids it holds."""
        queries = _check_vectors(queries, self.dim)
        pools = [list(p) for p in pools]
        out: list[dict[str, float]] = [{} for _ in pools]
        for part in self.pool.broadcast("score_batch", queries, pools):
            for merged, scores in zip(out, part):
                merged.update(scores)
        return out

    def score(self, query: np.ndarray, doc_ids: Sequence[str]) -> dict[str, float]:
        return self.score_batch(np.asarray(query, dtype=np.float32)[None, :], [doc_ids])[0]

    def nbytes(self) -> int:
        """What the shards hold together (``FaissIndex.nbytes`` of each)."""
        return int(sum(self.pool.broadcast("nbytes")))

    def set_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        self.pool.broadcast("set_params", ef_search, nprobe)
        self.params.update({k: int(v) for k, v in (("ef_search", ef_search), ("nprobe", nprobe)) if v is not None})

    def add(self, vectors, ids) -> None:
        raise NotImplementedError(f"a sharded index ({self.shards} shards) is read-only: build it again with the new "
                                  f"documents, or serve the domain from one FaissIndex to take writes")

    remove = add

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Each shard writes its own folder (on its actor, for a Ray pool: the path must be one every node
        reaches), then ``index_config.json`` names them with their checksums."""
        path = Path(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            folders = [shard_folder(i) for i in range(self.shards)]
            self.pool.map("save", [(str(tmp / f),) for f in folders])
            write_config(tmp, self.factory, self.dim, self.encoder_fingerprint, self.encoder_info, self.params,
                         self.counts, self.build_seconds)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, encoder_fingerprint: str | None = None, verify: bool = True,
             require_seal: bool = False, placer: Placer | None = None) -> "ShardedIndex":
        """Open a saved sharded index: each shard by ``placer`` (default: in this process), its files checked
        against their checksums (``verify``) where it is opened; a shard whose ``index_config.json`` differs from
        the one recorded, or an index built with another encoder, is an error."""
        path = Path(path)
        config = read_config(path, require_seal)
        check_encoder(path, config, encoder_fingerprint)
        openers = [functools.partial(FaissIndex.load, str(path / s["path"]), config["encoder_fingerprint"], verify)
                   for s in config["shards"]]
        pool = (placer or local_placer)(openers)
        idx = cls(pool, config["factory"], config["dim"], config["encoder_fingerprint"], config.get("encoder"),
                  config["params"], float(config.get("build_seconds", 0.0)))
        expected = [s["count"] for s in config["shards"]]
        if idx.counts != expected:
            pool.close()
            raise DamagedArtefact(f"{path}: the shards hold {idx.counts} documents, {expected} expected; the index is "
                                  f"damaged, rebuild it")
        return idx


def write_config(folder: Path, factory: str, dim: int, encoder_fingerprint: str | None, encoder_info: dict,
                 params: dict, counts: Sequence[int], build_seconds: float) -> None:
    """``index_config.json`` of a sharded index whose shard folders are already written in ``folder``."""
    shards = shard_entries(folder, counts, CONFIG_NAME)
    write_json(folder / CONFIG_NAME, sealed({
        "kind": KIND, "factory": factory, "metric": "inner_product", "dim": int(dim), "count": int(sum(counts)),
        "shards": shards, "params": params, "encoder_fingerprint": encoder_fingerprint, "encoder": encoder_info,
        "build_seconds": build_seconds, "library_version": library_version(),
    }))


def read_config(path: Path, require_seal: bool = False) -> dict:
    """A sharded index's ``index_config.json``, checked against its seal and each shard's config checksum."""
    config = read_json(path / CONFIG_NAME, "sharded FAISS index config")
    if config.get("kind") != KIND:
        raise ValueError(f"{path}: {CONFIG_NAME} describes a {config.get('kind')!r} index, not a sharded one")
    if not check_seal(config, path / CONFIG_NAME, "the sharded index's settings") and require_seal:
        raise DamagedArtefact(f"{path}: {CONFIG_NAME} has no seal; its settings cannot be checked")
    check_shard_entries(path, config["shards"], CONFIG_NAME)
    return config


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether the index folder at ``path`` holds a sharded index."""
    config = Path(path) / CONFIG_NAME
    return config.is_file() and read_json(config, "FAISS index config").get("kind") == KIND


def load_index(path: str | os.PathLike, encoder_fingerprint: str | None = None, verify: bool = True,
               require_seal: bool = False, placer: Placer | None = None):
    """The index saved at ``path``: a ``ShardedIndex`` (its shards placed by ``placer``) or a ``FaissIndex``."""
    if is_sharded(path):
        return ShardedIndex.load(path, encoder_fingerprint, verify, require_seal, placer)
    return FaissIndex.load(path, encoder_fingerprint, verify, require_seal)
