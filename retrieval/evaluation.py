"""Evaluation through ir-measures (pytrec_eval underneath): aggregate and per query; paired significance tests.

Every judged query counts: a judged query the ranking has no entry for scores 0 on every measure
(pytrec_eval on its own would silently leave it out of the mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import ir_measures
import numpy as np

from .types import Qrels, Ranking

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


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(t, p) of a paired t-test (scipy ``ttest_rel``) of ``a`` against ``b``; identical lists give (0, 1)."""
    from scipy.stats import ttest_rel

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.allclose(a, b):
        return 0.0, 1.0
    res = ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


CORRECTIONS = ("holm", "bonferroni")


def significance(per_query: Mapping[str, Mapping[str, Mapping[str, float]]], baseline: str,
                 metric: str = "nDCG@10", correction: str = "holm") -> dict[str, dict]:
    """Paired t-test of each condition's per-query ``metric`` against ``baseline``'s, over the baseline's queries,
    with the p-values corrected for testing several conditions against one baseline (statsmodels
    ``multipletests``: ``holm`` or ``bonferroni``, as PyTerrier offers).

    ``per_query[condition][qid][metric]``; returns ``{condition: {baseline, metric, delta, t, p_value,
    p_corrected, correction, tests, queries, wins, losses}}`` for every condition but the baseline.
    """
    from statsmodels.stats.multitest import multipletests

    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    base = per_query[baseline]
    qids = sorted(base)
    out = {}
    for name, pq in per_query.items():
        if name == baseline:
            continue
        a = np.array([pq.get(q, {}).get(metric, 0.0) for q in qids])
        b = np.array([base[q][metric] for q in qids])
        t, p = paired_ttest(a, b)
        out[name] = {"baseline": baseline, "metric": metric, "delta": float(a.mean() - b.mean()), "t": t, "p_value": p,
                     "queries": len(qids), "wins": int((a > b).sum()), "losses": int((a < b).sum())}
    if out:
        adjusted = multipletests([r["p_value"] for r in out.values()], method=correction)[1]
        for r, p in zip(out.values(), adjusted):
            r.update(p_corrected=float(p), correction=correction, tests=len(out))
    return out
