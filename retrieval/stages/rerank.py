"""The rerank stage: a cross-encoder reorders the top-k candidates of the stage before it.

The reranker's score can be used alone or fused with the score each candidate came with (``Fusion``: a
weighted sum of normalised scores, or RRF). ``fit_rerank`` chooses the depth and the fusion weight on
*training* queries, ``depths_within`` the depths a latency budget allows. The stage's output holds the top ``k``
reranked candidates (and, with ``keep_rest``, the remaining candidates below them in their incoming order); its
``stages["alone"]`` keeps the reranker's own ranking, before fusion, so both can be measured from one pass. A
reranker fused with weight 0 is not run at all (``runs_reranker``): the ranking is the same, and there is no
``stages["alone"]``. With a ``skip_margin`` (``margin_for`` fits one for a share of queries) it runs only for the
queries whose incoming leader is not far ahead; ``stages["alone"]`` then holds those queries only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..evaluation import evaluate
from ..latency import measure_latency
from ..stage import Pipeline, StageBase, as_queries, check_candidates, check_k
from ..types import Document, Qrels, Queries, Ranking
from .fusion import Fusion, fit_weight, zscore


DEPTHS = (10, 20, 30)  # the rerank depths a fit chooses from by default (PipelineSettings.rerank_depths too)


def lead(scores: Sequence[float]) -> float:
    """How far the best of a query's candidates leads the second, in standard deviations of their scores (the gap
    of their z-scores, the fusion's own normalisation); infinite with fewer than two (nothing to reorder)."""
    if len(scores) < 2:
        return float("inf")
    top = np.sort(zscore(np.asarray(scores, dtype=np.float64)))
    return float(top[-1] - top[-2])


def check_share(share, what: str = "the share of queries to rerank") -> float:
    """A share of queries to rerank: a number in (0, 1] (1: every query); refused otherwise, naming ``what``."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ValueError(f"{what} must be in (0, 1] (1: every query), got {share!r}")
    return float(share)


def unsure(value: float, margin: float | None) -> bool:
    """Whether a query whose incoming leader leads by ``value`` (``lead``) is reranked under a skip ``margin``."""
    return margin is None or value <= margin


def margin_for(leads: Sequence[float], share: float) -> float | None:
    """The skip margin that leaves ``share`` of queries with these ``lead``s to the reranker (those the stages before
    it are least sure of: the smallest leads); None where that is every query."""
    check_share(share)
    ordered = sorted(leads)
    m = int(np.ceil(share * len(ordered)))  # the m least sure are reranked: their leads are at most the margin
    return None if m >= len(ordered) or not np.isfinite(ordered[m - 1]) else float(ordered[m - 1])


class Rerank(StageBase):
    """Rerank the top ``k`` candidates with ``reranker`` (anything with ``score(queries, docs) -> array``).

    With ``skip_margin``, a query whose best candidate leads the second by more than that many standard deviations
    (``lead``) keeps its incoming order unscored: the reranker runs where the stages before it are unsure."""

    def __init__(self, reranker, corpus: Mapping[str, Document | str], k: int = 20, fusion: Fusion | None = None,
                 keep_rest: bool = False, name: str = "rerank", skip_margin: float | None = None):
        if not hasattr(reranker, "score"):
            raise TypeError(f"{name}: the reranker needs a score(queries, docs) method, got {type(reranker).__name__}")
        self.reranker, self.corpus = reranker, corpus
        self.k = check_k(k, name)
        self.fusion = fusion
        self.keep_rest = keep_rest
        self.name = name
        if skip_margin is not None and not (isinstance(skip_margin, (int, float)) and not isinstance(skip_margin, bool)
                                            and np.isfinite(skip_margin) and skip_margin >= 0):
            raise ValueError(f"{name}: skip_margin must be a number of standard deviations >= 0 or None, "
                             f"got {skip_margin!r}")
        self.skip_margin = None if skip_margin is None else float(skip_margin)

    def __repr__(self) -> str:
        skip = f", skip_margin={self.skip_margin}" if self.skip_margin is not None else ""
        return f"Rerank(k={self.k}, fusion={self.fusion}, keep_rest={self.keep_rest}{skip})"

    def reranks(self, top: Sequence[tuple[str, float]]) -> bool:
        """Whether the reranker runs for a query whose incoming top candidates are ``top`` (best first)."""
        return self.runs_reranker and (self.skip_margin is None or unsure(lead([s for _, s in top]), self.skip_margin))

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
        run = [q for q, r in ranked.items() if self.reranks(r[:k])]
        stages: dict[str, Ranking] = {}
        out: dict[str, dict[str, float]] = {}
        if run:
            top = Ranking({q: dict(ranked[q][:k]) for q in run})
            alone = stages["alone"] = self._score({q: list(top.scores[q]) for q in run}, queries)
            out.update((self.fusion([top, alone]) if self.fusion is not None else alone).scores)
        if len(run) < len(ranked):  # the rest keep their incoming order: fused alone (weight 0: the same as scored)
            top = Ranking({q: dict(r[:k]) for q, r in ranked.items() if q not in out})
            fusion = self.fusion
            out.update((Fusion(fusion.method, fusion.weights[:-1], fusion.rrf_k, fusion.norm)([top])
                        if fusion is not None else top).scores)
        out = {q: out[q] for q in ranked}
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


def fit_skip(stage: Rerank, queries: Queries, candidates: Ranking, share: float) -> dict:
    """Set ``stage.skip_margin`` so that its reranker runs for ``share`` of ``queries`` (held-out *training* queries,
    after ``fit_rerank``: at the stage's depth), those whose incoming leader leads least. Returns the record: share,
    margin (None: every query) and how many of these queries it reranks."""
    leads = [lead([s for _, s in candidates.ranked(q)[:stage.k]]) for q in as_queries(queries)]
    stage.skip_margin = margin_for(leads, share)
    reranked = sum(unsure(v, stage.skip_margin) for v in leads) if stage.runs_reranker else 0
    return {"share": float(share), "margin": stage.skip_margin, "reranked": int(reranked)}


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
