"""The learned-gate study (``python -m benchmarks gate-study``): gates fitted, cross-validated, compared."""

import numpy as np
import pytest

from benchmarks.gate import Gate, Pairs, fit_global, per_query, study


def _synthetic(n_queries=40, n_docs=12, seed=0):
    """Half the queries: the reranker finds the positive and the incoming score does not; the other half the reverse.
    The query half of the embedding input says which half the query is in; nothing in one global weight can."""
    rng = np.random.default_rng(seed)
    data, qrels = [], {}
    for i in range(n_queries):
        reranker_right = i % 2 == 0
        pos = int(rng.integers(n_docs))
        z_in, z_re = rng.normal(size=n_docs), rng.normal(size=n_docs)
        good, bad = (z_re, z_in) if reranker_right else (z_in, z_re)
        good[pos] = good.max() + 2.0
        bad[pos] = bad.min() - 2.0
        docs = [f"d{i}-{j}" for j in range(n_docs)]
        labels = np.zeros(n_docs)
        labels[pos] = 1.0
        q = np.full((n_docs, 2), 1.0 if reranker_right else -1.0) + rng.normal(scale=0.1, size=(n_docs, 2))
        d = rng.normal(size=(n_docs, 3))
        rank = np.arange(n_docs) / n_docs
        data.append(Pairs(f"q{i}", docs, z_in, z_re, labels, {
            "embedding": np.hstack([q, d]), "score": np.stack([z_in, z_re, np.abs(z_in - z_re), rank], axis=1)}))
        qrels[f"q{i}"] = {docs[pos]: 1}
    return data, qrels


def test_a_gate_learns_what_one_weight_cannot():
    data, qrels = _synthetic()
    result = study(data, qrels, k=4, seed=0, gates=("embedding",))
    rows = {r["fusion"]: r for r in result["rows"]}
    assert rows["global"]["delta"] == 0.0 and rows["global"]["p_value"] == 1.0
    # out of fold, the gate that sees which kind of query it is ranks nearly every positive first
    assert rows["embedding"]["nDCG@10"] > 0.95 > rows["global"]["nDCG@10"] + 0.2
    assert rows["embedding"]["p_value"] < 0.01 and rows["embedding"]["wins"] > rows["embedding"]["losses"]
    assert set(result["per_query"]["embedding"]) == {p.qid for p in data}
    assert all(f["embedding"]["l2"] in result["l2_grid"] for f in result["per_fold"])


def test_a_gate_held_to_zero_is_the_global_weight():
    data, qrels = _synthetic(seed=1)
    weight = fit_global(data, qrels)
    gate = Gate("score", l2=1e6, weight=weight).fit(data)
    assert np.abs(gate.weights).max() < 1e-4
    values = [gate(p) for p in data]
    assert np.allclose(np.concatenate(values), weight, atol=1e-3)
    assert per_query(data, values, qrels) == pytest.approx(per_query(data, [weight] * len(data), qrels), abs=1e-9)
    with pytest.raises(ValueError, match="gate must be one of"):
        Gate("attention", 0.1, 0.5)
    with pytest.raises(ValueError, match="2 <= folds <= queries"):
        study(data[:3], qrels, k=4)

