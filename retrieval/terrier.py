"""PyTerrier interop: any stage or pipeline of this library as a ``pyterrier.Transformer``.

PyTerrier's data model is DataFrames: topics (``qid``, ``query``) in, results (``qid``, ``query``, ``docno``,
``score``, ``rank``) out. A first stage (BM25, or a pipeline that starts with one) takes topics; a stage that
needs candidates (the dense stage's rescoring, the reranker) takes results, whose ``score`` column is the
incoming score. So our stages combine with PyTerrier's operators (``>>``, ``%``, ``+``, ...) and run in
``pt.Experiment`` beside any PyTerrier system:

    >>> import pyterrier as pt
    >>> from ir_measures import nDCG
    >>> from retrieval import load_pipeline
    >>> from retrieval.terrier import to_pyterrier
    >>> pipe, _, _ = load_pipeline("pipelines/scifact")
    >>> bm25, rest = to_pyterrier(pipe.stages[0]), to_pyterrier(pipe.stages[1] >> pipe.stages[2])
    >>> pt.Experiment([bm25, bm25 >> rest], topics, qrels, [nDCG @ 10], baseline=0, correction="holm")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .stage import Stage, check_k
from .types import Queries, Ranking

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def to_pyterrier(stage: Stage, k: int | None = None, needs_candidates: bool | None = None):
    """``stage`` (or a pipeline) as a PyTerrier transformer. ``k`` cuts each query's results (it never changes a
    stage's depth). ``needs_candidates``: ``True`` refuses topics without results (a reranker), ``False`` ignores
    incoming results (a first stage); by default the input decides: results in are the stage's candidates."""
    import pyterrier as pt

    if not isinstance(stage, Stage):
        raise TypeError(f"to_pyterrier takes a stage or a pipeline of this library, got {type(stage).__name__}")
    k = check_k(k, getattr(stage, "name", "stage"))

    class StageTransformer(pt.Transformer):
        """A ``retrieval`` stage in PyTerrier: topics or results in, results out."""

        def __init__(self):
            self.stage, self.k = stage, k

        def __repr__(self) -> str:
            return f"retrieval({self.stage!r})"

        def transform(self, inp: "pd.DataFrame") -> "pd.DataFrame":
            return _transform(self.stage, inp, self.k, needs_candidates)

    return StageTransformer()


def _transform(stage: Stage, inp: "pd.DataFrame", k: int | None, needs_candidates: bool | None) -> "pd.DataFrame":
    import pandas as pd
    import pyterrier as pt

    missing = [c for c in ("qid", "query") if c not in inp.columns]
    if missing:
        raise ValueError(f"{stage.name}: the input DataFrame has no {missing} column(s); PyTerrier topics have "
                         f"qid and query (results add docno and score)")
    has_results = "docno" in inp.columns
    if needs_candidates and not has_results:
        raise ValueError(f"{stage.name} reranks incoming results: give it results (qid, query, docno, score), "
                         f"e.g. first_stage >> this")
    qids = [str(q) for q in inp["qid"]]
    texts = dict(zip(qids, inp["query"]))
    queries = Queries({q: str(texts[q]) for q in dict.fromkeys(qids)})
    candidates = None
    if has_results and needs_candidates is not False:
        if "score" in inp.columns:
            incoming = [float(s) for s in inp["score"]]
        else:  # no scores: keep the incoming order
            incoming = [-float(r) for r in inp["rank"]] if "rank" in inp.columns else [0.0] * len(inp)
        scores: dict[str, dict[str, float]] = {q: {} for q in queries}
        for q, d, s in zip(qids, inp["docno"], incoming):
            scores[q][str(d)] = s
        candidates = Ranking(scores)
    ranking = stage.search(queries, candidates)
    if k:
        ranking = ranking.top_k(k)
    rows = [(q, queries[q], d, s) for q in queries for d, s in ranking.ranked(q)]
    out = pd.DataFrame(rows, columns=["qid", "query", "docno", "score"])
    return pt.model.add_ranks(out)
