import pytest

from retrieval.stages.fusion import Fusion, fit_weight, rrf, weighted
from retrieval.types import Ranking

A = Ranking({"q": {"a": 3.0, "b": 2.0, "c": 1.0}})
B = Ranking({"q": {"c": 0.9, "d": 0.8, "a": 0.1}})


def test_rrf():
    fused = rrf([A, B], k=60)
    assert fused.scores["q"]["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert fused.scores["q"]["d"] == pytest.approx(1 / 62)
    assert fused.ranked("q")[0][0] in ("a", "c")


def test_weighted_extremes_and_missing_documents():
    only_a = weighted([A, B], (1.0, 0.0))
    assert [d for d, _ in only_a.ranked("q")][:3] == ["a", "b", "c"]
    only_b = weighted([A, B], (0.0, 1.0), norm="minmax")
    assert [d for d, _ in only_b.ranked("q")][:2] == ["c", "d"]
    # "d" is missing from A: it gets A's lowest normalised score, not 0 or a crash
    assert only_a.scores["q"]["d"] == pytest.approx(only_a.scores["q"]["c"])


def test_fusion_settings_checked():
    with pytest.raises(ValueError, match="method must be one of"):
        Fusion("max")
    with pytest.raises(ValueError, match="2 rankings but 3 fusion weights"):
        Fusion("weighted", (1, 1, 1))([A, B])


def test_fit_weight_finds_the_better_ranking():
    qrels = {"q": {"d": 1}}
    fusion, rows = fit_weight(A, B, qrels, grid=(0.0, 0.5, 1.0))
    assert fusion.weights == (0.0, 1.0) and len(rows) == 3
