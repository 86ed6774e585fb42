"""Index shards on Ray actors: ``RayShards`` is the ``retrieval.shards.ShardPool`` of a cluster.

Each shard lives on its own actor, opened there by its opener (``FaissIndex.load`` of its folder, or a build from
vectors sent through the object store), and stays there: a search sends the query vectors once (``ray.put``) to
every actor and merges what they answer. Shard i's actor is placed on the i-th of the cluster's live nodes, round
robin (a soft node affinity: if that node cannot take it, Ray places it elsewhere) — Ray's own ``SPREAD`` is best
effort and was seen to put every shard on one node of a cluster whose second node had just joined. Actors ask for
no CPU of their own (``num_cpus=0``), so any number of shards fits any cluster; each runs single-threaded (Ray's
``OMP_NUM_THREADS``).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .cluster import live_nodes, ray_module


class ShardActor:
    """One shard, kept on a Ray actor; ``call`` runs one of its methods there."""

    def __init__(self, opener: Callable[[], object]):
        self.shard = opener()

    def call(self, method: str, *args):
        return getattr(self.shard, method)(*args)

    def node(self) -> str:
        return ray_module().get_runtime_context().get_node_id()


class RayShards:
    """Shards held by Ray actors (``retrieval.shards.ShardPool``)."""

    where = "ray"

    def __init__(self, openers: Sequence[Callable[[], object]], cpus: float = 0):
        if not openers:
            raise ValueError("a shard pool needs at least one shard")
        ray = self._ray = ray_module()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n["NodeID"] for n in live_nodes()]
        actor = ray.remote(ShardActor)
        self.actors = [actor.options(num_cpus=cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(
            nodes[i % len(nodes)], soft=True)).remote(open_) for i, open_ in enumerate(openers)]
        try:
            ray.get([a.node.remote() for a in self.actors])  # every shard opened (or its error raised here)
        except ray.exceptions.RayTaskError as e:
            self.close()
            raise e.as_instanceof_cause() from None

    def __len__(self) -> int:
        return len(self.actors)

    def __repr__(self) -> str:
        return f"RayShards({len(self)})"

    def _get(self, refs):
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None

    def map(self, method: str, args: Sequence[tuple]) -> list:
        if len(args) != len(self.actors):
            raise ValueError(f"{len(args)} argument tuples for {len(self.actors)} shards")
        return self._get([a.call.remote(method, *x) for a, x in zip(self.actors, args)])

    def broadcast(self, method: str, *args) -> list:
        # what is more than a number or a word goes to the object store once, and every shard reads it there
        refs = [a if isinstance(a, (bool, int, float, str, type(None))) else self._ray.put(a) for a in args]
        return self._get([a.call.remote(method, *refs) for a in self.actors])

    def nodes(self) -> list[str]:
        """The node each shard's actor runs on."""
        return self._get([a.node.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []


def ray_placer(openers: Sequence[Callable[[], object]]) -> RayShards:
    """A placer (``retrieval.shards.Placer``) that opens each shard on its own Ray actor."""
    return RayShards(openers)
