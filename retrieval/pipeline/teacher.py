"""A ranking system's own scores as a distillation teacher for the reranker.

``rerankers.train`` takes any ``teacher(queries, docs) -> scores`` over the texts of a training group.
``RankingTeacher`` answers with the score a system (e.g. the first two stages, BM25 >> hybrid dense, whose fused
scores are weighted z-scores) gives each document for the query: each query is searched once, and a document the
system did not rank gets the lowest score it gave that query. Passages that are no document's text as stored (a
sentence pseudo-query's positive: the document without that sentence) are named with their documents in ``passages``.
With ``zscore=True`` each query's scores are z-scored over the system's ranking first (the scale fusion gives them), so
a base of raw BM25 scores and one of fused scores weigh alike (``rerankers.train``'s ``residual``).
"""

from __future__ import annotations

from typing import Sequence

from ..stages.fusion import zscore
from ..types import Corpus, Queries


class RankingTeacher:
    """``teacher(queries, docs)``: ``system``'s score of each (query text, document text) pair."""

    def __init__(self, system, corpus: Corpus, k: int | None = None, passages: dict[str, str] | None = None,
                 zscore: bool = False):
        self.system, self.k, self.zscore = system, k, zscore
        self._ids: dict[str, str] = {}
        for doc_id in corpus:  # the texts a training group is made of: contents (title + text) or text alone
            doc = corpus[doc_id]
            self._ids.setdefault(doc.contents, doc_id)
            self._ids.setdefault(doc.text, doc_id)
        for passage, doc_id in (passages or {}).items():
            if doc_id not in corpus:
                raise ValueError(f"passages names {doc_id!r}, which is no document of the corpus")
            self._ids.setdefault(passage, doc_id)
        self._scores: dict[str, tuple[dict[str, float], float]] = {}  # query text -> (scores, the lowest of them)

    def _search(self, queries: Sequence[str]) -> None:
        new = [q for q in dict.fromkeys(queries) if q not in self._scores]
        if not new:
            return
        ranking = self.system.search(Queries({f"q{i}": q for i, q in enumerate(new)}), k=self.k)
        for i, q in enumerate(new):
            scores = ranking.scores.get(f"q{i}", {})
            if self.zscore and scores:
                scores = dict(zip(scores, zscore(list(scores.values())).tolist()))
            self._scores[q] = scores, min(scores.values(), default=0.0)

    def __call__(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} documents: the teacher scores pairs")
        self._search(queries)
        out = []
        for q, d in zip(queries, docs):
            scores, floor = self._scores[q]
            doc_id = self._ids.get(d)
            if doc_id is None:
                raise ValueError(f"the teacher was asked about a text that is no document of its corpus: {d[:80]!r}")
            out.append(float(scores.get(doc_id, floor)))
        return out
