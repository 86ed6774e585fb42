"""``RayExecutor``: the ``retrieval.shards.Executor`` of a Ray cluster. What runs where:

- ``place``: every index shard on its own actor (``RayShards``), kept there and searched there;
- ``run``: one Ray task per shard (e.g. each pass of a sharded BM25 build);
- ``encode_documents``: Ray Data over a pool of ``workers`` encoder actors (``encode``).

Pass it wherever an executor is taken (``build_pipeline``, ``shard_pipeline``, ``ShardedIndex.build``,
``ShardedBM25.build``); ``load_pipeline(..., placer=executor.place)`` opens a saved sharded pipeline with its
shards on the cluster.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..shards import Opener
from ..types import Corpus, Document
from .cluster import connect, keep_fault_handlers, live_nodes, ray_module
from .encode import BATCH, encode_corpus
from .shards import RayShards


class RayExecutor:
    """Sharded work on the Ray cluster at ``address`` (joined, or for ``"local"`` started, on creation)."""

    where = "ray"

    def __init__(self, address: str = "local", workers: int | None = None, cpus_per_worker: float = 1,
                 num_cpus: int | None = None, batch_size: int = BATCH):
        self.started = connect(address, num_cpus)
        self.address = address
        ray = ray_module()
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = int(workers or max(1, cluster_cpus // max(1, int(cpus_per_worker))))
        if self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.cpus_per_worker, self.batch_size = cpus_per_worker, batch_size

    def __repr__(self) -> str:
        return f"RayExecutor({self.address!r}, workers={self.workers})"

    def place(self, openers: Sequence[Opener]) -> RayShards:
        return RayShards(openers)

    def run(self, fn: Callable, args: Sequence[tuple]) -> list:
        ray = ray_module()
        task = ray.remote(fn).options(num_cpus=1)
        try:
            return ray.get([task.remote(*a) for a in args])
        except ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None

    def encode_documents(self, encoder, docs: Sequence[Document]) -> np.ndarray:
        corpus = Corpus(docs)
        return encode_corpus(encoder, corpus, self.workers, self.cpus_per_worker, self.batch_size)[1]

    def nodes(self) -> list[dict]:
        """The cluster's live nodes (``ray.nodes()``)."""
        return live_nodes()

    def close(self) -> None:
        """Leave the cluster (a local one, started by this executor, ends)."""
        ray = ray_module()
        if self.started and ray.is_initialized():
            with keep_fault_handlers():  # shutting down puts fault handlers back too, and not necessarily ours
                ray.shutdown()


def executor_from_args(args) -> RayExecutor | None:
    """The executor that ``retrieval.cli.add_ray_args``'s flags ask for: a ``RayExecutor``, or None (this process)."""
    if getattr(args, "ray_address", None) is None:
        if getattr(args, "ray_workers", None) is not None:
            raise ValueError("--ray-workers needs --ray-address (the cluster the workers run on)")
        return None
    return RayExecutor(args.ray_address, workers=args.ray_workers)
