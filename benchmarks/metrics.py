"""Evaluation through ir-measures (pytrec_eval underneath): aggregate and per query.

Every judged query counts: a judged query the ranking has no entry for scores 0 on every measure
(pytrec_eval on its own would silently leave it out of the mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import ir_measures

from retrieval.types import Qrels, Ranking

DEFAULT_MEASURES = ("nDCG@10", "R@100", "R@1000", "RR@10", "AP")


@dataclass
class Evaluation:
    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    queries: int

    def to_dict(self) -> dict:
        return {"metrics": self.aggregate, "queries": self.queries}


def _parse(names: Sequence[str]) -> dict[str, object]:
    parsed = {}
    for name in names:
        try:
            measure = ir_measures.parse_measure(name)
        except (ValueError, NameError, SyntaxError) as e:
            raise ValueError(f"unknown measure {name!r} ({e}); examples: nDCG@10, R@100, RR@10, AP") from None
        parsed[name] = measure
    return parsed


def evaluate(ranking: Ranking, qrels: Qrels, measures: Sequence[str] = DEFAULT_MEASURES) -> Evaluation:
    """Score ``ranking`` against ``qrels``; the mean is over every judged query."""
    if not qrels:
        raise ValueError("qrels are empty: nothing to evaluate against")
    parsed = _parse(measures)
    by_measure = {m: n for n, m in parsed.items()}
    per_query: dict[str, dict[str, float]] = {q: {n: 0.0 for n in parsed} for q in qrels}
    run = {q: docs for q, docs in ranking.scores.items() if q in qrels and docs}
    if run:
        for metric in ir_measures.iter_calc(list(parsed.values()), qrels, run):
            if metric.query_id in per_query:
                per_query[metric.query_id][by_measure[metric.measure]] = float(metric.value)
    n = len(per_query)
    aggregate = {name: sum(pq[name] for pq in per_query.values()) / n for name in parsed}
    return Evaluation(aggregate, per_query, n)
