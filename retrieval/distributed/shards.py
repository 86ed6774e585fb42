"""Index shards on Ray actors: ``RayShards`` is the ``retrieval.shards.ShardPool`` of a cluster.

Each shard lives on its own actor, opened there by its opener (``FaissIndex.load`` of its folder, or a build from
vectors sent through the object store), and stays there: a search sends the query vectors once (``ray.put``) to
every actor and merges what they answer. Shard i's actor is placed on the i-th of the cluster's live nodes, round
robin: a soft node affinity first (if that node cannot take it, Ray places it elsewhere), then every shard that
landed elsewhere while its node is alive is opened again there with a hard affinity (a few tries; if they fail
it stays where it is). Ray's own ``SPREAD`` is best effort and was seen to put every shard on one node of a
cluster whose second node had just joined; so was the soft affinity alone, once in a few dozen runs. Actors ask for
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
        self._actor, self._cpus = ray.remote(ShardActor), cpus
        nodes = [n["NodeID"] for n in live_nodes()]
        want = [nodes[i % len(nodes)] for i in range(len(openers))]
        self.actors = [self._start(open_, node, soft=True) for open_, node in zip(openers, want)]
        try:
            placed = self._get([a.node.remote() for a in self.actors])  # every shard opened (or its error raised)
        except Exception:
            self.close()
            raise
        for i, (open_, node) in enumerate(zip(openers, want)):
            if placed[i] != node:
                self._move(i, open_, node)

    def _start(self, opener: Callable[[], object], node: str, soft: bool):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return self._actor.options(num_cpus=self._cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=soft)).remote(opener)

    def _move(self, i: int, opener: Callable[[], object], node: str, tries: int = 3, wait_s: float = 30) -> None:
        """Shard ``i`` was opened elsewhere than on ``node``: open it again there (hard affinity), a few tries a
        little apart, and keep the new actor; where the node is gone or never takes it, the shard stays put."""
        import time

        for attempt in range(tries):
            if node not in {n["NodeID"] for n in live_nodes()}:
                return
            actor = self._start(opener, node, soft=False)
            try:
                if self._ray.get(actor.node.remote(), timeout=wait_s) == node:
                    self._ray.kill(self.actors[i])
                    self.actors[i] = actor
                    return
            except (self._ray.exceptions.RayError, TimeoutError):
                pass
            self._ray.kill(actor)
            if attempt + 1 < tries:
                time.sleep(1 + attempt)

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
