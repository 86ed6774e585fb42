"""Hard negatives mined with first stages (BM25, a dense stage): their top documents that are not positives."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..types import Queries, Ranking


class SkipTop:
    """A first stage searched for hard negatives with its top ``skip`` ranks left out: where a stage trained on these
    very queries ranks their unjudged positives (and near-copies of the judged ones)."""

    def __init__(self, stage, skip: int):
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
        self.stage, self.skip = stage, skip

    def search(self, queries: Queries, k: int) -> Ranking:
        ranking = self.stage.search(queries, k=k + self.skip)
        return Ranking({q: dict(ranking.ranked(q)[self.skip:]) for q in ranking.scores})


def mine_negatives(stage, queries: Mapping[str, str], exclude: Mapping[str, set[str]],
                   depth: int = 30) -> dict[str, list[str]]:
    """For each query, the stage's top ``depth`` documents minus ``exclude[qid]`` (its positives), best first
    (``SkipTop(stage, n)`` leaves its first n ranks out)."""
    ranking = stage.search(Queries(dict(queries)), k=depth)
    out = {}
    for qid in queries:
        ranked = [d for d, _ in ranking.ranked(qid)]
        out[qid] = [d for d in ranked if d not in exclude.get(qid, set())]
    return out


def mine_pool(first_stages: Sequence, queries: Mapping[str, str], exclude: Mapping[str, set[str]],
              depth: int) -> dict[str, list[str]]:
    """Each query's negatives: the union of every first stage's top ``depth``, positives excluded, interleaved
    by rank so each stage contributes its hardest documents first."""
    per_stage = [mine_negatives(stage, queries, exclude, depth=depth) for stage in first_stages]
    out = {}
    for q in queries:
        seen: dict[str, None] = {}
        for rank in range(depth):
            for negs in per_stage:
                if rank < len(negs.get(q, [])):
                    seen.setdefault(negs[q][rank])
        out[q] = list(seen)
    return out
