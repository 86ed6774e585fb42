import contextlib

import pytest

from retrieval.latency import measure_latency, measure_latency_alternating
from retrieval.stage import Pipeline, StageBase
from retrieval.types import Queries, Ranking


class Fixed(StageBase):
    """A first stage returning fixed documents, and a reranker that reverses what it gets."""

    def __init__(self, name, k=None, reverse=False):
        self.name, self.k, self.reverse = name, k, reverse

    def search(self, queries, candidates=None, k=None):
        k = k or self.k
        out = {}
        for qid in queries:
            if candidates is None:
                docs = {f"d{i}": float(10 - i) for i in range(10)}
            else:
                docs = {d: -s for d, s in candidates.scores.get(qid, {}).items()}
            out[qid] = dict(Ranking({qid: docs}).top_k(k).scores[qid]) if k else docs
        return Ranking(out)


def test_rshift_composes_and_keeps_trace():
    pipe = Fixed("first", k=5) >> Fixed("second", k=3, reverse=True)
    assert isinstance(pipe, Pipeline) and pipe.name == "first>>second"
    r = pipe.search({"q1": "x", "q2": "y"}, keep_stages=True)
    assert [d for d, _ in r.ranked("q1")] == ["d4", "d3", "d2"]
    assert [t.name for t in r.trace] == ["first", "second"]
    assert r.trace[0].candidates_out == 10 and r.trace[1].candidates_in == 10 and r.trace[1].candidates_out == 6
    assert set(r.stages) == {"first", "second"}
    assert len(r.stages["first"].scores["q1"]) == 5


def test_pipelines_flatten_and_k_cuts_the_final_ranking():
    pipe = (Fixed("a", k=5) >> Fixed("b", k=4)) >> Fixed("c", k=3)
    assert [s.name for s in pipe.stages] == ["a", "b", "c"]
    r = pipe.search(Queries({"q": "x"}), k=2)
    assert len(r.scores["q"]) == 2 and r.trace[-1].k == 3  # the last stage kept its own depth


def test_k_never_changes_a_stage_depth():
    class Reverse(StageBase):  # a "reranker" that reverses the order of its incoming top k (its depth)
        name, k = "rerank", 4

        def search(self, queries, candidates=None, k=None):
            depth = k or self.k
            return Ranking({q: {d: float(i) for i, (d, _) in enumerate(candidates.ranked(q)[:depth])} for q in queries})

    pipe = Fixed("first", k=8) >> Reverse()
    top10 = [d for d, _ in pipe.search_one("x", k=10)]
    top3 = [d for d, _ in pipe.search_one("x", k=3)]
    assert top3 == top10[:3] == ["d3", "d2", "d1"]
    assert pipe.stages[1].k == 4


def test_pipeline_input_checks():
    with pytest.raises(ValueError, match="unique"):
        Fixed("a") >> Fixed("a")
    with pytest.raises(TypeError, match="is not a stage"):
        Pipeline([Fixed("a"), object()])
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline([])
    pipe = Fixed("a", k=5) >> Fixed("b")
    with pytest.raises(TypeError, match="search_one"):
        pipe.search("text")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        pipe.search({"q": "x"}, k=-1)
    assert pipe.search({}).scores == {}
    hits = pipe.search_one("x", k=1)
    assert hits == [("d4", -6.0)]
    assert [t.name for t in hits.trace] == [s.name for s in pipe.stages] and hits.trace[-1].candidates_out == 5


def test_latency_variants_take_turns_query_by_query():
    pipe = Fixed("first", k=5) >> Fixed("second", k=3, reverse=True)
    queries = Queries({f"q{i}": "x" for i in range(6)})
    entered = []

    def variant(name):
        @contextlib.contextmanager
        def inside():
            entered.append(name)
            yield
        return inside

    out = measure_latency_alternating(pipe, queries, 4, [variant("a"), variant("b")])
    assert len(out) == 2 and all(len(total) == 4 and set(per) == {"first", "second"} and len(per["second"]) == 4
                                 for per, total in out)
    # one warm-up query in each, then each query in both, the order rotating so that neither always goes first
    assert entered == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    per, total = measure_latency(pipe, queries, 10)  # every query once (fewer than asked)
    assert len(total) == 6 and all(t > 0 for t in total) and len(per["first"]) == 6
