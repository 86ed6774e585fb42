"""The rerank stage: a cross-encoder reorders the top-k candidates of the stage before it.

The reranker's score can be used alone or fused with the score each candidate came with (``Fusion``: a
weighted sum of normalised scores, or RRF). ``fit_rerank`` chooses the depth and the fusion weight on
*training* queries, ``depths_within`` the depths a latency budget allows. The stage's output holds the top ``k``
reranked candidates (and, with ``keep_rest``, the remaining candidates below them in their incoming order); its
``stages["alone"]`` keeps the reranker's own ranking, before fusion, so both can be measured from one pass. A
reranker fused with weight 0 is not run at all (``runs_reranker``): the ranking is the same, and there is no
``stages["alone"]``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..evaluation import evaluate
from ..latency import measure_latency
from ..stage import Pipeline, StageBase, as_queries, check_candidates, check_k
from ..types import Document, Qrels, Queries, Ranking
from .fusion import Fusion, fit_weight


DEPTHS = (10, 20, 30)  # the rerank depths a fit chooses from by default (PipelineSettings.rerank_depths too)


class Rerank(StageBase):
    """Rerank the top ``k`` candidates with ``reranker`` (anything with ``score(queries, docs) -> array``)."""

    def __init__(self, reranker, corpus: Mapping[str, Document | str], k: int = 20, fusion: Fusion | None = None,
                 keep_rest: bool = False, name: str = "rerank"):
        if not hasattr(reranker, "score"):
            raise TypeError(f"{name}: the reranker needs a score(queries, docs) method, got {type(reranker).__name__}")
        self.reranker, self.corpus = reranker, corpus
        self.k = check_k(k, name)
        self.fusion = fusion
        self.keep_rest = keep_rest
        self.name = name

    def __repr__(self) -> str:
        return f"Rerank(k={self.k}, fusion={self.fusion}, keep_rest={self.keep_rest})"

    def _text(self, doc_id: str) -> str:
        try:
            doc = self.corpus[doc_id]
        except KeyError:
            raise KeyError(f"{self.name}: candidate document {doc_id!r} is not in the reranker's corpus; "
                           f"give Rerank the corpus the first stages index") from None
        return doc.contents if isinstance(doc, Document) else str(doc)

    @property
    def runs_reranker(self) -> bool:
        """False when the fusion gives the reranker weight 0 (a fit may choose that where it adds nothing): its
        scores would change no ranking, so ``search`` does not compute them and costs the stage next to nothing."""
        return self.fusion is None or self.fusion.weights[-1] > 0

    def scores(self, queries: Queries, candidates: Ranking, k: int | None = None) -> Ranking:
        """The reranker's own scores for each query's top ``k`` candidates (no fusion)."""
        k = k or self.k
        return self._score({q: [d for d, _ in candidates.ranked(q)[:k]] for q in queries}, queries)

    def _score(self, top: dict[str, list[str]], queries: Queries) -> Ranking:
        pairs = [(q, d) for q, docs in top.items() for d in docs]
        values = self.reranker.score([queries[q] for q, _ in pairs], [self._text(d) for _, d in pairs])
        out: dict[str, dict[str, float]] = {q: {} for q in top}
        for (q, d), s in zip(pairs, np.asarray(values, dtype=np.float64).tolist()):
            out[q][d] = s
        return Ranking(out)

    def search(self, queries: Queries, candidates: Ranking | None = None, k: int | None = None) -> Ranking:
        queries = as_queries(queries)
        k = check_k(k, self.name) or self.k
        candidates = check_candidates(candidates, queries, self.name)
        if candidates is None:
            raise ValueError(f"{self.name}: a reranker needs candidates from an earlier stage, "
                             f"e.g. BM25(...) >> Rerank(...)")
        ranked = {q: candidates.ranked(q) for q in queries}  # sorted once per query
        top = Ranking({q: dict(r[:k]) for q, r in ranked.items()})
        stages: dict[str, Ranking] = {}
        if not self.runs_reranker:  # fused with weight 0 its scores would change nothing: the same result, unscored
            fusion = self.fusion
            reranked = Fusion(fusion.method, fusion.weights[:-1], fusion.rrf_k, fusion.norm)([top])
        else:
            alone = stages["alone"] = self._score({q: list(s) for q, s in top.scores.items()}, queries)
            reranked = self.fusion([top, alone]) if self.fusion is not None else alone
        out = reranked.scores
        if self.keep_rest:
            out = {q: dict(s) for q, s in out.items()}
            for q, r in ranked.items():
                floor = min(out[q].values(), default=0.0)
                for i, (d, _) in enumerate(r[k:], start=1):
                    out[q][d] = floor - i  # below every reranked document, in the incoming order
        return Ranking(out, stages=stages)


def fit_rerank(stage: Rerank, queries: Queries, candidates: Ranking, qrels: Qrels,
               depths: Sequence[int] = DEPTHS, metric: str = "nDCG@10") -> tuple[int, Fusion, list[dict]]:
    """Choose the depth and the fusion weight (candidates' score vs reranker's) for the best ``metric``.

    Give it *training* queries the reranker never trained on: the choice must not see the evaluated split.
    The reranker scores the deepest depth once; shallower depths reuse those scores. Ties go to the
    shallower (cheaper) depth.
    """
    queries = as_queries(queries)
    deepest = max(depths)
    alone = stage.scores(queries, candidates, deepest)
    rows, best = [], None
    for depth in sorted(depths):
        first = Ranking({q: dict(candidates.ranked(q)[:depth]) for q in queries})
        second = Ranking({q: {d: alone.scores[q][d] for d in first.scores[q]} for q in queries})
        fusion, grid = fit_weight(first, second, qrels, metric=metric)
        score = max(r[metric] for r in grid)
        alone_score = evaluate(second, qrels, [metric]).aggregate[metric]
        rows.append({"depth": depth, "weight": fusion.weights[1], metric: score, f"{metric} alone": alone_score,
                     "grid": grid})
        if best is None or score > best[1] + 1e-12:
            best = (depth, score, fusion)
    assert best is not None
    return best[0], best[2], rows


def depths_within(budget_ms: float, depths: Sequence[int], first: Sequence[StageBase], stage: Rerank,
                  queries: Queries, n: int = 20, seed: int = 0) -> tuple[tuple[int, ...], dict]:
    """The rerank depths at which ``first >> stage`` answers a query within ``budget_ms`` milliseconds: the median
    over ``n`` of ``queries`` run one at a time, on this machine, as it is now (measured, not assumed).

    Depths are measured shallowest first and the measuring stops at the first one over the budget (a deeper one
    only costs more). When even the shallowest is over, it is the one returned, and the record says the budget
    was not met. Returns (the depths allowed, the record: budget, measured medians, met).
    """
    if not budget_ms or budget_ms <= 0:
        raise ValueError(f"the latency budget must be a positive number of milliseconds, got {budget_ms!r}")
    queries = as_queries(queries)
    if len(queries) == 0:
        raise ValueError("measuring the rerank depths' latency needs at least one query")
    saved = stage.k
    measured: dict[int, float] = {}
    try:
        for depth in sorted(set(depths)):
            stage.k = depth
            _, total = measure_latency(Pipeline([*first, stage]), queries, n, seed, desc=f"latency at depth {depth}")
            measured[depth] = float(np.median(total) * 1000.0)
            if measured[depth] > budget_ms:
                break
    finally:
        stage.k = saved
    allowed = tuple(d for d, ms in measured.items() if ms <= budget_ms)
    record = {"budget_ms": float(budget_ms), "p50_ms": {str(d): round(ms, 2) for d, ms in measured.items()},
              "queries": min(n, len(queries)), "met": bool(allowed)}
    return allowed or (min(depths),), record
