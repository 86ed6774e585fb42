"""Shards: objects of one kind (index shards) that answer the same method calls, called together.

A sharded index or stage asks a ``ShardPool``: ``map(method, args)`` calls ``method`` on every shard with that
shard's own arguments and returns the results in shard order; ``broadcast`` gives every shard the same
arguments. Where the shards live is the pool's business:

- ``LocalShards`` (here): in this process, called from a thread pool (FAISS and numpy release the GIL);
- ``retrieval.distributed.RayShards``: each on a Ray actor, on any node of a cluster.

Shards are opened by *openers*: picklable callables that return the shard (``functools.partial(FaissIndex.load,
folder)``, or one that builds it), so the same opener opens a shard here or on an actor. A *placer* takes the
openers and returns the pool.

An ``Executor`` says where sharded work runs: ``place`` (the placer), ``run`` (one function call per shard, e.g.
each shard's pass of a BM25 build) and ``encode_documents`` (a corpus through a bi-encoder). ``LOCAL`` runs
everything in this process; ``retrieval.distributed.RayExecutor`` runs it on a Ray cluster (actors, tasks, Ray
Data). Code below the distributed layer takes an executor and never imports Ray.
"""

from __future__ import annotations

import heapq
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from .util import DamagedArtefact, sha256_file

Opener = Callable[[], object]


@runtime_checkable
class ShardPool(Protocol):
    def __len__(self) -> int: ...

    def map(self, method: str, args: Sequence[tuple]) -> list: ...

    def broadcast(self, method: str, *args) -> list: ...

    def close(self) -> None: ...


Placer = Callable[[Sequence[Opener]], ShardPool]


class LocalShards:
    """Shards held in this process; ``map`` calls them together from a thread pool."""

    where = "local"

    def __init__(self, shards: Sequence[object]):
        if not shards:
            raise ValueError("a shard pool needs at least one shard")
        self.shards = list(shards)
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.shards)

    def __repr__(self) -> str:
        return f"LocalShards({len(self)})"

    def map(self, method: str, args: Sequence[tuple]) -> list:
        if len(args) != len(self.shards):
            raise ValueError(f"{len(args)} argument tuples for {len(self.shards)} shards")
        calls = [getattr(shard, method) for shard in self.shards]
        if len(calls) == 1:
            return [calls[0](*args[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="shard")
        return [f.result() for f in [self._pool.submit(call, *a) for call, a in zip(calls, args)]]

    def broadcast(self, method: str, *args) -> list:
        return self.map(method, [args] * len(self.shards))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class Sharded:
    """What an index cut into shards shares: its ``pool`` of shards and their document ``counts``."""

    pool: ShardPool
    counts: list[int]

    @property
    def shards(self) -> int:
        return len(self.counts)

    def close(self) -> None:
        """Release the shards (a Ray pool's actors end)."""
        self.pool.close()


def local_placer(openers: Sequence[Opener]) -> LocalShards:
    """The default placer: every shard opened in this process."""
    return LocalShards([open_() for open_ in openers])


class Executor:
    """Sharded work in this process (the default); ``retrieval.distributed.RayExecutor`` does the same on Ray."""

    where = "local"

    def place(self, openers: Sequence[Opener]) -> ShardPool:
        """Open (or build) every shard and keep it: here, in this process."""
        return local_placer(openers)

    def run(self, fn: Callable, args: Sequence[tuple]) -> list:
        """``fn(*a)`` for each ``a`` of ``args``, results in order."""
        return [fn(*a) for a in args]

    def encode_documents(self, encoder, docs: Sequence) -> np.ndarray:
        """The documents' vectors by ``encoder`` (a ``BiEncoder``), in order."""
        return encoder.encode_documents(docs, show_progress=True)

    def close(self) -> None:
        pass


LOCAL = Executor()


def shard_folder(i: int) -> str:
    """The folder of shard ``i`` inside a sharded index's folder."""
    return f"shard-{i:03d}"


def shard_entries(folder: Path, counts: Sequence[int], config_name: str) -> list[dict]:
    """What a sharded index's config records of its shards (written in ``folder``): each one's folder, documents, and
    the sha256 of its own config (which holds the checksums of its files)."""
    return [{"path": shard_folder(i), "count": int(n), "config_sha256": sha256_file(folder / shard_folder(i) / config_name)}
            for i, n in enumerate(counts)]


def check_shard_entries(path: Path, entries: Sequence[dict], config_name: str) -> None:
    """``DamagedArtefact`` if a shard a sharded index names is missing, or its config is not the one recorded."""
    for entry in entries:
        config = path / entry["path"] / config_name
        if not config.is_file():
            raise DamagedArtefact(f"{path}: shard {entry['path']} is missing ({config} not found); build the index again")
        if sha256_file(config) != entry["config_sha256"]:
            raise DamagedArtefact(f"{path}: shard {entry['path']}'s {config_name} is not the one this index was saved "
                                  f"with; the index is damaged, build it again")


def contiguous(n: int, shards: int) -> list[range]:
    """``n`` rows cut into ``shards`` contiguous ranges whose sizes differ by at most one."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"the number of shards must be a positive integer, got {shards!r}")
    if shards > n:
        raise ValueError(f"{shards} shards for {n} documents: every shard needs at least one; use at most {n}")
    bounds = [n * i // shards for i in range(shards + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(shards)]


def merge_top_k(per_shard: Iterable[Iterable[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """The ``k`` best (id, score) of every shard's own best, best first. Of equal scores at the cut, the earlier
    shard's, and within a shard the order it gave: shards cut contiguously from a corpus then keep what one index
    over it keeps (its earlier rows)."""
    return heapq.nsmallest(k, (hit for hits in per_shard for hit in hits), key=lambda h: -h[1])  # stable
