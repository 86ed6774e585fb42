"""The speed benchmarks run end to end on small settings and report their ratios (figures, not timed tests)."""

import json

import pytest

from benchmarks.__main__ import main
from rerankers.train import RerankTrainSettings


@pytest.mark.slow
def test_speed_bm25_small(datasets_root, tmp_path):
    code = main(["speed-bm25", "--datasets-root", str(datasets_root), "--min-docs", "3000", "--queries", "30",
                 "--rank-bm25-queries", "5", "--repeats", "1", "--output", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "speed_bm25.json").read_text())
    scifact, passages = result["scifact"], result["passages"]
    assert scifact["same_ranking_lucene_stage_and_pyserini"] is True
    engines = {r["engine"]: r for r in scifact["rows"]}
    assert set(engines) == {"stage (bm25s)", "plain bm25s (retrieve)", "stage (lucene)", "plain pyserini (search)",
                            "stage (rank_bm25)"}
    # the bm25s stage ranks as plain bm25s over the same terms, and within 0.01 nDCG@10 of Lucene
    assert engines["stage (bm25s)"]["nDCG@10"] == engines["plain bm25s (retrieve)"]["nDCG@10"]
    assert abs(scifact["ratios"]["bm25s - lucene nDCG@10"]) < 0.01
    assert passages["docs"] >= 3000 and passages["same_ranking_as_pyserini"] is True
    assert set(passages["ratios"]) == {"lucene stage / pyserini time", "pyserini / bm25s stage time",
                                       "rank_bm25 / bm25s stage time"}


def test_passage_corpus_reaches_the_size_asked(datasets_root):
    from benchmarks.speed_bm25 import passage_corpus

    corpus = passage_corpus(datasets_root, 20_000)
    assert len(corpus) >= 20_000
    assert all(len(corpus[d].text.split()) <= 40 for d in list(corpus)[:100])


@pytest.mark.slow
def test_speed_dense_encode_small(datasets_root, tmp_path):
    code = main(["speed-dense", "--datasets-root", str(datasets_root), "--parts", "encode", "--encode-docs", "8",
                 "--repeats", "1", "--output", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "speed_dense.json").read_text())
    rows = {r["variant"]: r for r in result["encode"]["rows"]}
    assert len(rows) in (8, 9) and all(r["docs_per_s"] > 0 for r in rows.values())  # bf16 where native only
    assert rows["BiEncoder, openvino-int8 (all)"]["cosine_to_plain_min"] > 0.9  # int8, every matmul
    assert any("int8_scope='auto'" in k for k in result["encode"]["ratios"])
    # the auto export run one batch at a time gives the same vectors as its batches on every core at once
    (auto,) = [k.split(", ", 1)[1].rsplit(", one batch", 1)[0] for k in rows if k.endswith("one batch at a time")]
    for stat in ("cosine_to_plain_mean", "cosine_to_plain_min"):
        assert rows[f"BiEncoder, {auto}, one batch at a time"][stat] == rows[f"BiEncoder, {auto}"][stat]
    assert any("one batch at a time" in k for k in result["encode"]["ratios"])
    assert rows["BiEncoder.encode_documents (base)"]["cosine_to_plain_min"] > 0.9999
    assert rows["BiEncoder, openvino-fp32"]["cosine_to_plain_min"] > 0.999


def test_real_sentences(datasets_root):
    from benchmarks.speed_dense import real_sentences

    s = real_sentences(datasets_root, 500)
    assert len(s) == 500 and len(set(s)) == 500 and all(len(x.split()) >= 4 for x in s)


@pytest.mark.slow
def test_speed_rerank_small(datasets_root, tmp_path):
    code = main(["speed-rerank", "--datasets-root", str(datasets_root), "--pairs", "8", "--max-length", "64",
                 "--depths", "2", "4", "--depth-queries", "1", "--repeats", "1", "--train-steps", "1",
                 "--output", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "speed_rerank.json").read_text())
    t = result["throughput"]
    assert t["pairs"] == 8 and t["same_scores_as_plain"] is True and all(r["pairs_per_s"] > 0 for r in t["rows"])
    rows = {r["variant"]: r for r in t["rows"]}
    assert {"openvino-fp32", "openvino-int8 (keep-outputs)", "openvino-int8 (all)"} <= set(rows)
    assert any("int8_scope='auto'" in k for k in t["ratios"])
    assert rows["openvino-fp32"]["spearman_to_fp32"] > 0.99
    (auto,) = [k.rsplit(", one batch", 1)[0] for k in rows if k.endswith("one batch at a time")]
    assert rows[f"{auto}, one batch at a time"]["spearman_to_fp32"] == rows[auto]["spearman_to_fp32"]
    assert [r["k"] for r in result["depth"]["rows"]] == [2, 4]
    s = result["train_step"]
    assert s["pairs_per_step"] == 8 * (1 + RerankTrainSettings.negatives) and s["steps"] == 1 and s["auto"] in ("float32", "bfloat16")
    steps = {(r["precision"], r["dropout"]): r for r in s["rows"]}
    assert set(steps) == {("float32", "all"), ("bfloat16", "all"), ("float32", "no-attention"), ("float32", "none")}
    assert all(r["s_per_step"] > 0 for r in steps.values())
    # all start from the same weights and batch (a new head near zero): first losses differ by bf16 rounding and
    # dropout's masks only
    for v in steps:
        assert steps[v]["first_loss"] == pytest.approx(steps["float32", "all"]["first_loss"], abs=0.05)
    assert set(s["ratio"]) >= {"float32: dropout all / no-attention (step time)", "float32: dropout all / none (step time)"}
    assert "amx=" in s["cpu"] and "avx512_bf16=" in s["cpu"]
