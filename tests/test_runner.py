"""The benchmark runner end to end, through its command line, on ADI."""

import json

import pytest

from benchmarks.__main__ import main
from retrieval.data import load_dataset
from retrieval.evaluation import evaluate
from retrieval.types import DataFormatError, Ranking

REQUIRED = {"dataset", "split", "pipeline", "queries", "metrics", "stages", "index_seconds"}
METRICS = {"nDCG@10", "R@100", "R@1000", "RR@10", "AP"}


def test_run_writes_metrics_run_and_report(datasets_root, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "--dataset", str(datasets_root / "adi"), "--split", "test", "--pipeline", "bm25",
                 "--pipeline", "bm25-rank", "--output", str(out), "--index-dir", str(tmp_path / "idx"),
                 "--latency-queries", "5", "--bm25-k", "100"])
    assert code == 0
    table = capsys.readouterr().out
    assert "| adi | test | bm25 |" in table and "| adi | test | bm25-rank |" in table
    ds = load_dataset(datasets_root / "adi", "test")
    for name in ("bm25", "bm25-rank"):
        folder = out / "adi" / name
        record = json.loads((folder / "metrics.json").read_text())
        assert REQUIRED <= set(record)
        assert set(record["metrics"]) >= METRICS
        assert record["queries"] == 35 and record["split"] == "test" and record["pipeline"] == name
        stage = record["stages"][0]
        assert stage["name"] == "bm25" and stage["k"] == 100
        assert {"p50", "p95"} == set(stage["latency_ms"]) and stage["latency_ms"]["p50"] > 0
        assert "R@100" in stage["metrics"]
        # the run file on disk gives back the reported figure
        again = evaluate(Ranking.from_trec(folder / "run.trec"), ds.qrels).aggregate["nDCG@10"]
        assert again == pytest.approx(record["metrics"]["nDCG@10"], abs=1e-6)
        assert "# " + name in (folder / "report.md").read_text()
        wall = record["wall_seconds"]  # where the time went: the parts lie within the whole
        assert wall["batch"] == record["batch_seconds"] and min(wall.values()) >= 0
        assert wall["build"] + wall["latency"] + wall["batch"] <= wall["total"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["pipeline"] for r in summary] == ["bm25", "bm25-rank"]
    md = (out / "summary.md").read_text()
    total = sum(r["wall_seconds"]["total"] for r in summary)
    assert "## Where the time went" in md and "| all |  | " in md and f"| {total:.1f} |" in md


def test_run_rejects_unknown_pipeline_and_split(datasets_root, tmp_path):
    with pytest.raises(ValueError, match="unknown pipeline"):
        main(["run", "--dataset", str(datasets_root / "adi"), "--split", "test", "--pipeline", "bm99",
              "--output", str(tmp_path)])
    with pytest.raises(DataFormatError, match="unknown split 'dev'; available splits: test"):
        main(["run", "--dataset", str(datasets_root / "adi"), "--split", "dev", "--pipeline", "bm25",
              "--output", str(tmp_path)])
    # bm25-fit needs a training split; ADI has none, and the error says so
    with pytest.raises(DataFormatError, match="unknown training split \\(--train-split\\) 'train'"):
        main(["run", "--dataset", str(datasets_root / "adi"), "--split", "test", "--pipeline", "bm25-fit",
              "--output", str(tmp_path), "--index-dir", str(tmp_path / "idx")])


@pytest.mark.slow
def test_scifact_fit_holds_or_improves_dev(datasets_root, tmp_path):
    out = tmp_path / "out"
    main(["run", "--dataset", str(datasets_root / "scifact"), "--split", "dev", "--pipeline", "bm25",
          "--pipeline", "bm25-fit", "--output", str(out), "--index-dir", str(tmp_path / "idx"),
          "--latency-queries", "10"])
    base = json.loads((out / "scifact" / "bm25" / "metrics.json").read_text())
    fit = json.loads((out / "scifact" / "bm25-fit" / "metrics.json").read_text())
    assert fit["fit"]["split"] == "train" and fit["fit"]["queries"] == 599
    assert fit["metrics"]["nDCG@10"] >= base["metrics"]["nDCG@10"] - 1e-9


@pytest.mark.parametrize("pipeline", ["bm25>>ce", "bm25>>ce-corpus"])
def test_rerank_pipelines_through_the_runner(datasets_root, tmp_path, tiny_model_dir, pipeline):
    """Plumbing of the reranker conditions with tiny random models (quality is the benchmark's job)."""
    from test_rerank import _backbone

    backbone = _backbone(tmp_path / "hf", seed=0)
    out = tmp_path / "out"
    args = ["run", "--dataset", str(datasets_root / "adi"), "--split", "test", "--train-split", "test",
            "--pipeline", pipeline, "--output", str(out), "--index-dir", str(tmp_path / "idx"),
            "--latency-queries", "3", "--rerank-epochs", "2", "--rerank-depths", "5", "10", "--rerank-epoch-curve",
            "--dense-model", str(tiny_model_dir), "--dense-epochs", "1", "--rerank-model", str(backbone),
            "--rerank-precision", "float32"]
    assert main(args) == 0
    record = json.loads((out / "adi" / pipeline / "metrics.json").read_text())
    assert [s["name"] for s in record["stages"]] == ["bm25", "rerank"]
    rerank = record["stages"][1]
    if pipeline == "bm25>>ce":  # depth and weight chosen on held-out training queries
        assert rerank["k"] == record["fusion"]["depth"] in (5, 10) and len(record["fusion"]["depths"]) == 2
    else:  # no labels: the rule fixed in advance
        assert rerank["k"] == 20 and record["fusion"]["weights"] == [0.5, 0.5] and record["fusion"]["depths"] == []
    assert "nDCG@10" in rerank["parts"]["alone"]
    assert len(record["train"]["history"]) == 3 and record["train"]["trainable_share"] > 0
    assert [c["epoch"] for c in record["epoch_curve"]] == [1, 2]
    # the curve scores each epoch's weights on torch, then puts the kept weights and their int8 export back: the
    # pipeline evaluated is the one trained and exported (it once stayed on torch after the curve, unreported)
    assert {c["inference"] for c in record["epoch_curve"]} == {"torch"}
    used = record["train"]["inference"]["used"]  # the corpus-only reranker's int8 export is refused on this random model
    assert record["settings"]["inference"] == used and (used == "openvino-int8" or pipeline == "bm25>>ce-corpus")
    report = (out / "adi" / pipeline / "report.md").read_text()
    assert "alone (before fusion)" in report
    # a second run (in this process, which keeps the built pipeline) reuses the trained adapter from the cache and
    # computes the same figures
    assert main(args) == 0
    again = json.loads((out / "adi" / pipeline / "metrics.json").read_text())
    assert again["metrics"] == record["metrics"] and again["train"]["cached_at"] == record["train"]["cached_at"]
    assert again["settings"]["inference"] == used and again["fusion"] == record["fusion"]


def test_expected_figures_follow_the_depth_a_latency_budget_chose(tmp_path):
    """A reranker condition's figures depend on the depth the machine's speed admitted: a run at another depth is
    checked against that depth's figure, or reported as "other depth" where the config has none; never failed for it."""
    from benchmarks.regression import check_expected, load_config

    expected = {"s": {"full": {"nDCG@10": 0.76, "tolerance": 0.01, "depth": 10, "nDCG@10 at depth 5": 0.74},
                      "ce": {"nDCG@10": 0.72, "tolerance": 0.01, "depth": 10}, "bm25": {"nDCG@10": 0.70}}}

    def run(full_at, full, ce_at, ce, bm25=0.70):
        records = [{"dataset": "s", "pipeline": "full", "metrics": {"nDCG@10": full}, "fusion": {"depth": full_at}},
                   {"dataset": "s", "pipeline": "ce", "metrics": {"nDCG@10": ce}, "fusion": {"depth": ce_at}},
                   {"dataset": "s", "pipeline": "bm25", "metrics": {"nDCG@10": bm25}}]
        return {c["condition"]: (c["status"], c["expected"], c["depth"]) for c in check_expected(records, expected)}

    assert run(10, 0.76, 10, 0.72) == {"full": ("ok", 0.76, 10), "ce": ("ok", 0.72, 10), "bm25": ("ok", 0.70, None)}
    assert run(5, 0.74, 20, 0.70) == {"full": ("ok", 0.74, 5), "ce": ("other depth", None, 20), "bm25": ("ok", 0.70, None)}
    assert run(5, 0.72, 10, 0.70, 0.68) == {"full": ("below", 0.74, 5), "ce": ("below", 0.72, 10),
                                           "bm25": ("below", 0.70, None)}
    assert run(10, 0.74, 10, 0.75)["full"][0] == "below" and run(10, 0.74, 10, 0.75)["ce"][0] == "above"
    # a figure at another depth needs the depth the others are at, and must name a metric the table gives
    (tmp_path / "d").mkdir()
    for spec, match in (('{ "nDCG@10" = 0.7, "nDCG@10 at depth 5" = 0.6 }', "add depth = <k>"),
                        ('{ "nDCG@10" = 0.7, depth = 10, "R@100 at depth 5" = 0.6 }', "at depth <k>"),
                        ('{ "nDCG@10" = 0.7, depth = 10, "nDCG@10 at depth five" = 0.6 }', "at depth <k>")):
        (tmp_path / "c.toml").write_text(f'datasets = ["d"]\nconditions = ["full"]\n[expected.d]\nfull = {spec}\n')
        with pytest.raises(ValueError, match=match):
            load_config(tmp_path / "c.toml", tmp_path)
