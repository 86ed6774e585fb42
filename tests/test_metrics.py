import numpy as np
import pytest

from retrieval.evaluation import evaluate, significance
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


def test_significance_corrects_for_several_conditions():
    rng = np.random.default_rng(0)
    qids = [f"q{i}" for i in range(40)]
    base = rng.uniform(0, 1, len(qids))
    per_query = {"bm25": {q: {"nDCG@10": float(v)} for q, v in zip(qids, base)}}
    for name, shift in (("a", 0.15), ("b", 0.05), ("c", 0.0)):
        noisy = np.clip(base + shift + rng.normal(0, 0.2, len(qids)), 0, 1)
        per_query[name] = {q: {"nDCG@10": float(v)} for q, v in zip(qids, noisy)}
    holm = significance(per_query, "bm25")
    bonf = significance(per_query, "bm25", correction="bonferroni")
    assert set(holm) == {"a", "b", "c"} and all(r["tests"] == 3 and r["correction"] == "holm" for r in holm.values())
    raw = sorted((r["p_value"], n) for n, r in holm.items())
    # Holm: the smallest p times 3, the next times 2 (never below the one before), the largest times 1
    assert holm[raw[0][1]]["p_corrected"] == pytest.approx(min(1, 3 * raw[0][0]))
    assert holm[raw[1][1]]["p_corrected"] == pytest.approx(min(1, max(3 * raw[0][0], 2 * raw[1][0])))
    for n, r in bonf.items():
        assert r["p_corrected"] == pytest.approx(min(1.0, 3 * r["p_value"]))
        assert holm[n]["p_corrected"] <= r["p_corrected"] and r["p_corrected"] >= r["p_value"]
    with pytest.raises(ValueError, match="correction must be one of"):
        significance(per_query, "bm25", correction="fdr")
