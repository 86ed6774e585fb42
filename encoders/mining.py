"""Hard negatives mined with a first stage (BM25 here): its top documents that are not positives."""

from __future__ import annotations

from typing import Mapping

from retrieval.types import Queries


def mine_negatives(stage, queries: Mapping[str, str], exclude: Mapping[str, set[str]], depth: int = 30,
                   skip: int = 0) -> dict[str, list[str]]:
    """For each query, the stage's top ``depth`` documents minus ``exclude[qid]`` (its positives),
    best first, leaving out the first ``skip`` ranks (likely unjudged positives)."""
    ranking = stage.search(Queries(dict(queries)), k=depth)
    out = {}
    for qid in queries:
        ranked = [d for d, _ in ranking.ranked(qid)][skip:]
        out[qid] = [d for d in ranked if d not in exclude.get(qid, set())]
    return out
