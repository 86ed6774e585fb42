import pytest

from retrieval.evaluation import evaluate
from retrieval.types import Ranking

QRELS = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}}


def test_perfect_and_known_values():
    run = Ranking({"q1": {"a": 2.0, "x": 1.0}, "q2": {"x": 3.0, "b": 2.0, "c": 1.0}})
    ev = evaluate(run, QRELS, ["RR@10", "R@1", "AP", "nDCG@10"])
    assert ev.per_query["q1"] == {"RR@10": 1.0, "R@1": 1.0, "AP": 1.0, "nDCG@10": 1.0}
    assert ev.per_query["q2"]["RR@10"] == pytest.approx(0.5)
    assert ev.per_query["q2"]["R@1"] == 0.0
    assert ev.per_query["q2"]["AP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert ev.aggregate["RR@10"] == pytest.approx(0.75)


def test_missing_queries_count_as_zero():
    run = Ranking({"q1": {"a": 1.0}})
    ev = evaluate(run, QRELS, ["RR@10"])
    assert ev.queries == 2
    assert ev.aggregate["RR@10"] == pytest.approx(0.5)  # not 1.0: q2 had no results
    assert evaluate(Ranking({}), QRELS, ["RR@10"]).aggregate["RR@10"] == 0.0


def test_unknown_measure_and_empty_qrels():
    with pytest.raises(ValueError, match="unknown measure 'nDCG@ten'"):
        evaluate(Ranking({}), QRELS, ["nDCG@ten"])
    with pytest.raises(ValueError, match="qrels are empty"):
        evaluate(Ranking({}), {}, ["AP"])
