"""PyTerrier interop: our stages as pt.Transformers, composed with PyTerrier's operators and run in pt.Experiment."""

import numpy as np
import pandas as pd
import pytest
from ir_measures import nDCG

pt = pytest.importorskip("pyterrier")

from retrieval.evaluation import evaluate  # noqa: E402
from retrieval.stages.rerank import Rerank  # noqa: E402
from retrieval.terrier import to_pyterrier  # noqa: E402


class _Overlap:
    """A reranker by interface: the share of the query's words found in the document."""

    def score(self, queries, docs):
        return np.array([len(set(q.lower().split()) & set(d.lower().split())) / (1 + len(q.split()))
                         for q, d in zip(queries, docs)], dtype=np.float32)


def _frames(adi):
    topics = pd.DataFrame({"qid": list(adi.queries), "query": [adi.queries[q] for q in adi.queries]})
    qrels = pd.DataFrame([(q, d, g) for q, docs in adi.qrels.items() for d, g in docs.items()],
                         columns=["qid", "docno", "label"])
    return topics, qrels


def test_stages_are_pyterrier_transformers_and_compose(adi, adi_bm25s):
    topics, _ = _frames(adi)
    rerank = Rerank(_Overlap(), adi.corpus, k=10, keep_rest=True)
    bm25_pt, rerank_pt = to_pyterrier(adi_bm25s), to_pyterrier(rerank, needs_candidates=True)
    assert isinstance(bm25_pt, pt.Transformer)
    res = bm25_pt(topics)
    assert {"qid", "query", "docno", "score", "rank"} <= set(res.columns)
    ours = adi_bm25s.search(adi.queries)
    q = topics.qid[0]
    got = res[res.qid == q].sort_values("rank")
    assert list(got.docno) == [d for d, _ in ours.ranked(q)] and list(got["rank"]) == list(range(len(got)))
    # PyTerrier's >> over our two stages ranks exactly as our own pipeline, and % cuts without changing depth
    both = (bm25_pt >> rerank_pt) % 5
    mine = (adi_bm25s >> rerank).search(adi.queries, k=5)
    out = both(topics)
    for q in adi.queries:
        assert list(out[out.qid == q].sort_values("rank").docno) == [d for d, _ in mine.ranked(q)]
    with pytest.raises(ValueError, match="reranks incoming results"):
        rerank_pt(topics)
    with pytest.raises(ValueError, match="no \\['query'\\] column"):
        bm25_pt(topics[["qid"]])


def test_pt_experiment_beside_a_pyterrier_baseline_with_holm(adi, adi_bm25s, adi_rank):
    topics, qrels = _frames(adi)
    baseline_run = adi_rank.search(adi.queries)  # another engine's run, brought in as a plain PyTerrier transformer
    baseline = pt.Transformer.from_df(pd.DataFrame(
        [(q, adi.queries[q], d, s) for q in adi.queries for d, s in baseline_run.ranked(q)],
        columns=["qid", "query", "docno", "score"]))
    ours = to_pyterrier(adi_bm25s)
    reranked = ours >> to_pyterrier(Rerank(_Overlap(), adi.corpus, k=20, keep_rest=True))
    table = pt.Experiment([baseline, ours, reranked], topics, qrels, eval_metrics=[nDCG @ 10],
                          names=["rank_bm25 (run)", "bm25s", "bm25s >> overlap"], baseline=0, correction="holm")
    assert list(table.name) == ["rank_bm25 (run)", "bm25s", "bm25s >> overlap"]
    assert {"nDCG@10 p-value", "nDCG@10 p-value corrected"} <= set(table.columns)
    assert table.loc[1, "nDCG@10 p-value corrected"] >= table.loc[1, "nDCG@10 p-value"]
    expected = evaluate(adi_bm25s.search(adi.queries), adi.qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    assert table.loc[1, "nDCG@10"] == pytest.approx(expected, abs=1e-6)
