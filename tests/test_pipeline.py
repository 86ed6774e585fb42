"""The full pipeline: trained from one call, saved to one folder, loaded (also in a fresh process) with the
same rankings, parts checked on load; the runner's `full`, saved-folder, significance, plots and config.

Tiny random models (built from the packaged tokenizer) on ADI: plumbing and exactness, not quality.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import main as bench_main
from encoders.train import default_settings
from rerankers.train import RerankTrainSettings, default_keep_layers, on_plateau, split_examples, training_examples
from retrieval.pipeline.folder import DamagedPipeline, PipelineMismatch, load_pipeline, save_pipeline
from retrieval.pipeline import PipelineSettings, build_pipeline
from retrieval.data import load_dataset
from retrieval.lora.base import PACKAGED_ID
from retrieval.evaluation import evaluate
from retrieval.stage import Pipeline
from retrieval.stages.fusion import Fusion
from retrieval.stages.rerank import fit_skip
from retrieval.types import Ranking
from retrieval.util import DamagedArtefact, sealed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir):
    from test_rerank import _backbone

    return {"dense": str(tiny_model_dir), "rerank": str(_backbone(tmp_path_factory.mktemp("ce") / "hf", seed=0))}


def _settings(models, **kw) -> PipelineSettings:
    base = dict(dense_model=models["dense"], rerank_model=models["rerank"], rerank_precision="float32",
                dense_epochs=1, rerank_epochs=1, rerank_depths=(5, 10), dense_k=20, neighbours=20, bm25_k=50,
                fit_queries=10, rerank_negatives=("bm25", "dense"))
    return PipelineSettings(**{**base, **kw})


BUILT = dict(rerank_dense_skip=2, rerank_pseudo_items=8, rerank_lora_layers=(-1,), seed=1, rerank_group_negatives=1,
             rerank_pseudo_kind="sentence", rerank_lora_rank=4, rerank_passage="focused",
             rerank_keep_layers=2)  # the settings of the module's pipeline (``built``; keep_layers: all 2 of the tiny one's)


@pytest.fixture(scope="module")
def built(adi, models, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    settings = _settings(models, **BUILT)
    return build_pipeline(adi.corpus, adi.queries, adi.qrels, settings, cache_dir=cache, log=lambda m: None), cache


def _rankings_equal(a, b):
    assert a.scores.keys() == b.scores.keys()
    for q in a.scores:
        assert a.ranked(q) == b.ranked(q)


def test_pipeline_trains_three_stages_and_chooses_on_held_out_queries(built, adi):
    b, _ = built
    bm25, dense, rerank = b.pipeline.stages
    assert [s.name for s in b.pipeline.stages] == ["bm25", "dense", "rerank"]
    assert (bm25.k, dense.k, dense.mode, rerank.k) == (50, 20, "hybrid", rerank.k) and rerank.k in (5, 10)
    info = b.info
    held = set(info["held_out"])
    assert held and held <= set(adi.queries)
    # the held-out queries took no gradient step in either adapter
    dense_val, rerank_train = info["stages"]["dense"]["train"], info["stages"]["rerank"]["train"]
    assert dense_val["val_queries"] >= len(held) and rerank_train["val_queries"] >= 1
    # one seed splits both adapters' validation queries alike (seed 1 here): the held-out slice is all of them
    assert dense_val["settings"]["seed"] == rerank_train["settings"]["seed"] == 1
    assert len(held) == min(10, rerank_train["val_queries"], dense_val["val_queries"])
    assert info["stages"]["rerank"]["train"]["negatives_from"]["dense"] == {
        "query_encoder": dense.encoder.fingerprint("query"), "skip": 2}
    assert info["stages"]["rerank"]["train"]["settings"]["pseudo_items"] == 8  # the settings reach the trainer
    assert info["stages"]["rerank"]["train"]["settings"]["negatives"] == 1  # not the default (2)
    assert info["stages"]["rerank"]["train"]["settings"]["pseudo_kind"] == "sentence"
    assert (rerank_train["settings"]["passage"], rerank_train["settings"]["keep_layers"]) == ("focused", 2)
    assert (rerank.reranker.passage, rerank.reranker.keep_layers) == ("focused", 2)
    lora = info["stages"]["rerank"]["train"]["settings"]["lora"]
    assert lora["layers"] == [-1] and (lora["r"], lora["alpha"]) == (4, 8)  # not the default's (32, 64)
    assert {p.shape[0] for n, p in rerank.reranker.model.named_parameters() if "lora_A" in n} == {4}
    assert all(".layer.1." in n or "pooler" in n for n, _ in rerank.reranker.model.named_parameters() if "lora_A" in n)
    judged = split_examples(training_examples("supervised", adi.corpus, adi.queries, adi.qrels), RerankTrainSettings())[0]
    assert rerank_train["train_queries"] == len(judged) + 8  # the pseudo-queries trained beside the judged ones
    assert len(info["stages"]["rerank"]["fusion"]["depths"]) == 2
    # trainings that ended on the listwise plateau were begun again, at most twice; the kept one ended there only
    # when the retries ran out
    plateau = RerankTrainSettings(negatives=1)
    abandoned = rerank_train["abandoned"]
    assert rerank_train["settings"]["plateau_retries"] == 2 and len(abandoned) <= 2
    assert all(on_plateau(h, plateau) for h in abandoned)
    assert len(abandoned) == 2 or not on_plateau(rerank_train["history"], plateau)
    ranking = b.pipeline.search(adi.queries, keep_stages=True)
    runs = b.pipeline.stages[-1].runs_reranker  # a fit may give this tiny reranker weight 0: then it is not run
    assert {"bm25", "dense", "rerank", *(["rerank/alone"] if runs else [])} == set(ranking.stages)
    assert [t.name for t in ranking.trace] == ["bm25", "dense", "rerank"]
    assert all(len(d) <= 20 for d in ranking.scores.values())  # rerank keeps the dense stage's 20 (keep_rest)


def test_a_latency_budget_leaves_the_depths_over_it_out_of_the_choice(built, adi, models):
    b, cache = built
    ample = build_pipeline(adi.corpus, adi.queries, adi.qrels, _settings(models, rerank_budget_ms=1e6, **BUILT),
                           cache_dir=cache, log=lambda m: None)  # every part from the cache
    budget = ample.info["stages"]["rerank"]["budget"]
    assert budget["met"] and list(budget["p50_ms"]) == ["5", "10"] and budget["budget_ms"] == 1e6
    assert ample.pipeline.stages[-1].k == b.pipeline.stages[-1].k  # every depth allowed: the same choice
    lines = []
    tight = build_pipeline(adi.corpus, adi.queries, adi.qrels, _settings(models, rerank_budget_ms=1e-3, **BUILT),
                           cache_dir=cache, log=lines.append)
    budget = tight.info["stages"]["rerank"]["budget"]
    assert not budget["met"] and list(budget["p50_ms"]) == ["5"] and tight.pipeline.stages[-1].k == 5
    assert [d["depth"] for d in tight.info["stages"]["rerank"]["fusion"]["depths"]] == [5]
    assert any(m.startswith("warning: no rerank depth fits 0.001 ms") for m in lines)
    assert "budget" not in b.info["stages"]["rerank"]  # no budget, no timing
    for bad in (0, -1.0, True, float("inf")):
        with pytest.raises(ValueError, match="rerank_budget_ms must be a positive number"):
            _settings(models, rerank_budget_ms=bad)


def test_saved_pipeline_loads_with_identical_rankings_in_a_fresh_process(built, adi, tmp_path):
    b, _ = built
    folder = save_pipeline(b.pipeline, tmp_path / "pipe", b.corpus, b.info)
    expected = b.pipeline.search(adi.queries)
    pipe, corpus, config = load_pipeline(folder)
    _rankings_equal(pipe.search(adi.queries), expected)
    assert config["info"]["held_out"] == b.info["held_out"] and corpus.fingerprint() == adi.corpus.fingerprint()
    qfile = tmp_path / "queries.json"
    qfile.write_text(json.dumps(dict(adi.queries)))
    code = ("import json,sys; from retrieval.pipeline.folder import load_pipeline; p,_,_=load_pipeline(sys.argv[1]); "
            "r=p.search(json.load(open(sys.argv[2]))); json.dump({q: r.ranked(q) for q in r.scores}, sys.stdout)")
    out = subprocess.run([sys.executable, "-c", code, str(folder), str(qfile)], cwd=REPO, capture_output=True,
                         text=True, check=True)
    fresh = json.loads(out.stdout)
    assert fresh.keys() == expected.scores.keys()
    for q, ranked in fresh.items():
        assert [(d, s) for d, s in ranked] == expected.ranked(q)  # same documents, order and scores (JSON floats round-trip)
    with pytest.raises(FileExistsError):
        save_pipeline(b.pipeline, folder, b.corpus)


def test_a_reranker_fitted_to_weight_0_is_saved_so_and_not_run(built, adi, tmp_path):
    b, _ = built
    rerank = b.pipeline.stages[-1]
    fitted = rerank.fusion
    rerank.fusion = Fusion("weighted", (1.0, 0.0))  # what a fit chooses where the reranker adds nothing
    try:
        folder = save_pipeline(b.pipeline, tmp_path / "pipe", b.corpus, b.info)
    finally:
        rerank.fusion = fitted
    pipe, _, _ = load_pipeline(folder)
    assert not pipe.stages[-1].runs_reranker
    assert "the reranker is not run (weight 0" in (folder / "README.md").read_text()
    out, first_two = pipe.search(adi.queries), Pipeline(pipe.stages[:-1]).search(adi.queries)
    assert all([d for d, _ in out.ranked(q)] == [d for d, _ in first_two.ranked(q)] for q in adi.queries)


def test_a_skip_margin_is_saved_sealed_and_shown(built, adi, tmp_path):
    b, _ = built
    rerank = b.pipeline.stages[-1]
    fitted = rerank.fusion
    rerank.fusion = Fusion("weighted", (0.5, 0.5))  # a reranker that runs
    try:
        held = adi.queries.subset(b.info["held_out"])
        record = fit_skip(rerank, held, Pipeline(b.pipeline.stages[:-1]).search(held), 0.5)
        expected = b.pipeline.search(adi.queries)
        folder = save_pipeline(b.pipeline, tmp_path / "pipe", b.corpus, b.info)
    finally:
        rerank.fusion, rerank.skip_margin = fitted, None
    assert record["margin"] is not None and 0 < record["reranked"] < len(held)
    pipe, _, _ = load_pipeline(folder)
    assert pipe.stages[-1].skip_margin == record["margin"]
    _rankings_equal(pipe.search(adi.queries), expected)
    assert f"at most {record['margin']:.3f} standard deviations" in (folder / "README.md").read_text()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="rerank_share must be in"):
            PipelineSettings(rerank_share=bad)


def test_a_copied_pipeline_folder_opens_and_its_models_open_in_plain_sentence_transformers(built, adi, tmp_path):
    """A pipeline folder moved to another directory opens with the same rankings; its query-side dense encoder
    opens with plain ``SentenceTransformer(dir)`` (a Router: queries adapted, documents the base model's) and its
    reranker with plain ``CrossEncoder(dir)``, in a child process that never imports this library, giving the
    stages' own torch vectors and scores."""
    import numpy as np

    b, _ = built
    save_pipeline(b.pipeline, tmp_path / "pipe", b.corpus, b.info)
    moved = tmp_path / "another" / "place"
    moved.parent.mkdir()
    (tmp_path / "pipe").rename(moved)
    pipe, _, _ = load_pipeline(moved)
    _rankings_equal(pipe.search(adi.queries), b.pipeline.search(adi.queries))
    _, dense, rerank = pipe.stages
    enc, ce = dense.encoder, rerank.reranker
    assert enc.adapters["default"]["side"] == "query"
    texts = [adi.queries[q] for q in list(adi.queries)[:4]] + [adi.corpus[d].contents for d in list(adi.corpus)[:4]]
    pairs = [[texts[i], texts[4 + i]] for i in range(4)]
    code = ("import json, sys\nfrom sentence_transformers import CrossEncoder, SentenceTransformer\n"
            "texts, pairs = json.loads(sys.stdin.read())\nst = SentenceTransformer(sys.argv[1], device='cpu')\n"
            "out = {'query': st.encode_query(texts).tolist(), 'document': st.encode_document(texts).tolist(),\n"
            "       'rerank': CrossEncoder(sys.argv[2], device='cpu').predict(pairs).tolist()}\n"
            "assert not {'retrieval', 'encoders', 'rerankers'} & set(sys.modules)\nprint(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", code, str(moved / "stages" / "dense" / "encoder"),
                          str(moved / "stages" / "rerank" / "reranker")], input=json.dumps([texts, pairs]),
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    enc.use_torch()
    ce.use_torch()
    np.testing.assert_allclose(got["query"], enc.encode_queries(texts), atol=1e-5)
    np.testing.assert_allclose(got["document"], enc.encode_documents(texts), atol=1e-5)
    # (that the Router's query route really applies the adapter: test_bi_encoder, with a visibly moved adapter)
    np.testing.assert_allclose(got["rerank"], ce.score([q for q, _ in pairs], [d for _, d in pairs]), rtol=1e-4,
                               atol=1e-5)


def test_openvino_exports_are_saved_checked_and_loaded_apart_from_shared_models(built, adi, tmp_path):
    """The default pipeline runs both models as OpenVINO int8 exports (calibrated on the corpus, checked against
    torch); the folder holds them, loads them, and a service's shared models load them per domain."""
    from retrieval.pipeline.shared import SharedModels

    b, _ = built
    _, dense, rerank = b.pipeline.stages
    assert dense.encoder.inference == "openvino-int8" and "@openvino-int8:" in dense.encoder.fingerprint("query")
    report = b.info["stages"]["dense"]["train"]["inference"]
    assert report["used"] == "openvino-int8" and report["report"]["query"]["cosine_mean"] >= 0.99
    # the tiny random reranker's near-tied scores may not survive int8 (it depends on the CPU's int8 kernels): the
    # record says which way it went, and why when refused
    record = b.info["stages"]["rerank"]["train"]["inference"]
    assert record["used"] == rerank.reranker.inference
    refused = record["report"]["pairs"]["spearman"] < 0.98
    assert record["used"] == ("torch" if refused else "openvino-int8")
    assert refused == ("refused" in record.get("reason", "")) == bool(record["report"].get("refused"))
    folder = save_pipeline(b.pipeline, tmp_path / "pipe", b.corpus, b.info)
    assert "stages/dense/encoder/openvino/query/model.bin" in json.loads((folder / "pipeline.json").read_text())["checksums"]
    expected = b.pipeline.search(adi.queries)
    alone, _, _ = load_pipeline(folder)
    shared, _, _ = load_pipeline(folder, models=SharedModels(device="cpu"), adapter_prefix="ov")
    for pipe in (alone, shared):
        _rankings_equal(pipe.search(adi.queries), expected)


def test_speed_inference_compares_a_saved_pipeline_with_its_float32_torch_self(built, datasets_root, tmp_path):
    from benchmarks.__main__ import main

    b, _ = built
    folder = save_pipeline(b.pipeline, tmp_path / "pipe", b.corpus, b.info)
    code = main(["speed-inference", "--pipeline", str(folder), "--dataset", str(datasets_root / "adi"), "--split", "test",
                 "--latency-queries", "3", "--output", str(tmp_path / "out")])
    assert code == 0
    rows = json.loads((tmp_path / "out" / "speed_inference.json").read_text())["rows"]
    reranker_exported = b.pipeline.stages[2].reranker.inference != "torch"  # see the test above
    assert [r["variant"] for r in rows] == ["as saved", *(["as saved, one batch at a time",
                                                           "reranker on torch (auto precision)"] if reranker_exported
                                                          else []), "all torch, float32 (reference)"]
    if reranker_exported:  # the two ways to run the same export rank alike
        assert rows[1]["nDCG@10"] == pytest.approx(rows[0]["nDCG@10"], abs=1e-9)
    assert rows[0]["inference"]["dense"] == "openvino-int8" and rows[-1]["inference"]["dense"] == "torch"
    assert rows[-1]["inference"]["rerank"] == "torch (float32)" and rows[-1]["nDCG@10 - reference"] == 0
    assert all(r["p50_ms"] > 0 and set(r["stage_p50_ms"]) == {"bm25", "dense", "rerank"} for r in rows)


def test_load_checks_that_the_parts_fit(built, adi, tmp_path):
    b, _ = built
    folder = save_pipeline(b.pipeline, tmp_path / "pipe", b.corpus, b.info)
    # a changed corpus
    bad = tmp_path / "corpus-changed"
    shutil.copytree(folder, bad)
    lines = (bad / "corpus.jsonl").read_text().splitlines()
    (bad / "corpus.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DamagedPipeline, match="corpus.jsonl does not match its checksum"):
        load_pipeline(bad)  # every file is checked against the checksums recorded at save time ...
    with pytest.raises(PipelineMismatch, match="not the corpus"):
        load_pipeline(bad, check_files=False)  # ... and, without them, every part against the others
    # a FAISS index built with another encoder (the base model's vectors under a query-side adapter are fine,
    # so swap in an index whose recorded encoder differs)
    bad = tmp_path / "index-swapped"
    shutil.copytree(folder, bad)
    cfg_path = bad / "stages" / "dense" / "index" / "index_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["encoder_fingerprint"] = "another-model:0000"
    cfg_path.write_text(json.dumps(sealed(cfg)))  # a whole, consistent index of another encoder
    with pytest.raises(PipelineMismatch, match="dense"):
        load_pipeline(bad, check_files=False)
    # a reranker whose adapter is not the one the pipeline was built with
    bad = tmp_path / "reranker-swapped"
    shutil.copytree(folder, bad)
    pcfg = json.loads((bad / "pipeline.json").read_text())
    pcfg["stages"][2]["reranker"] = "something-else"
    (bad / "pipeline.json").write_text(json.dumps(sealed(pcfg)))
    with pytest.raises(PipelineMismatch, match="rerank"):
        load_pipeline(bad)
    # a damaged index file
    bad = tmp_path / "index-damaged"
    shutil.copytree(folder, bad)
    with open(bad / "stages" / "dense" / "index" / "vectors.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(DamagedPipeline, match="vectors.npy does not match its checksum"):
        load_pipeline(bad)
    with pytest.raises(ValueError, match="checksum"):  # FAISS's own checksums catch it too
        load_pipeline(bad, check_files=False)
    (bad / "corpus.jsonl").unlink()
    with pytest.raises(DamagedPipeline, match="corpus.jsonl is missing"):
        load_pipeline(bad)


def test_every_setting_and_file_that_changes_a_score_is_covered(built, adi, tmp_path):
    """pipeline.json's own settings are sealed: a fusion weight edited by hand is found at load, as is a damaged
    index setting or adapter file (with check_files off, by the parts' own checksums and seals)."""
    b, _ = built
    folder = save_pipeline(b.pipeline, tmp_path / "pipe", b.corpus, b.info)
    bad = tmp_path / "weight-edited"
    shutil.copytree(folder, bad)
    pcfg = json.loads((bad / "pipeline.json").read_text())
    pcfg["stages"][1]["fusion"]["weights"] = [0.15, 0.85]
    (bad / "pipeline.json").write_text(json.dumps(pcfg))
    with pytest.raises(DamagedPipeline, match="pipeline.json .*does not match its seal"):
        load_pipeline(bad)
    bad = tmp_path / "nprobe-edited"
    shutil.copytree(folder, bad)
    cfg_path = bad / "stages" / "dense" / "index" / "index_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["params"]["ef_search"] = 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(DamagedPipeline, match="index_config.json does not match its checksum"):
        load_pipeline(bad)
    with pytest.raises(DamagedArtefact, match="index_config.json .*does not match its seal"):
        load_pipeline(bad, check_files=False)
    bad = tmp_path / "adapter-damaged"
    shutil.copytree(folder, bad)
    weights = bad / "stages" / "rerank" / "reranker" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(DamagedArtefact, match="adapter_model.safetensors does not match its checksum"):
        load_pipeline(bad, check_files=False)


def test_settings_reject_bad_values(models):
    with pytest.raises(ValueError, match="exceeds the dense stage's k"):
        _settings(models, rerank_depths=(50,), dense_k=20)
    with pytest.raises(ValueError, match="bm25_k"):
        _settings(models, bm25_k=0)
    with pytest.raises(ValueError, match="rerank_lora_rank must be a positive integer"):
        _settings(models, rerank_lora_rank=0)
    with pytest.raises(ValueError, match="rerank_keep_layers"):
        _settings(models, rerank_keep_layers=0)
    for lr in (0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rerank_lr must be a positive number"):
            _settings(models, rerank_lr=lr)
    for norm in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="rerank_max_grad_norm must be a positive number or None"):
            _settings(models, rerank_max_grad_norm=norm)
    assert _settings(models, rerank_max_grad_norm=0.5).rerank_train_settings().max_grad_norm == 0.5
    # the packaged MiniLM's reranker keeps its bottom 3 layers unless told (README routes); another backbone all
    assert default_keep_layers(None) == default_keep_layers(PACKAGED_ID) == 3
    assert default_keep_layers(models["rerank"]) is None and _settings(models).rerank_keep_layers is None
    with pytest.raises(ValueError, match="passage must be one of"):
        _settings(models, rerank_passage="best")
    with pytest.raises(ValueError, match="rerank_head_pooler must be one of"):
        _settings(models, rerank_head_pooler="mean")
    assert _settings(models, rerank_head_pooler="identity").rerank_train_settings().lora.new_head_pooler == "identity"
    assert _settings(models).rerank_train_settings().lora.new_head_pooler == "base"
    with pytest.raises(ValueError, match="rerank_pseudo_items adds, and that is 0"):
        _settings(models, rerank_pseudo_kind="sentence")
    with pytest.raises(ValueError, match="pseudo-query kind must be one of"):
        _settings(models, rerank_pseudo_items=4, rerank_pseudo_kind="claims")


def test_reranker_layers_the_backbone_lacks_are_refused_before_any_work(adi, models, tmp_path):
    """More kept layers than the reranker's backbone has, LoRA on a layer it does not keep, or more tokens than it has
    positions, are settings that only the model's config can check: the build reads it first and refuses with the setting's name and flag, before BM25
    or the dense stage spend anything (the cache stays empty)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(ValueError, match=r"rerank_keep_layers \(--rerank-keep-layers\) must be an integer from 1 to "
                                         r".*'s 2 transformer layers, got 3"):
        build_pipeline(adi.corpus, adi.queries, adi.qrels, _settings(models, rerank_keep_layers=3), cache_dir=cache,
                       log=lambda m: None)
    with pytest.raises(ValueError, match=r"rerank_lora_layers \(--rerank-lora-layers\)=\(1,\): the model has 1 layers"):
        build_pipeline(adi.corpus, adi.queries, adi.qrels, _settings(models, rerank_keep_layers=1,
                                                                     rerank_lora_layers=(1,)),
                       cache_dir=cache, log=lambda m: None)
    with pytest.raises(ValueError, match=r"rerank_max_length \(--rerank-max-length\) must be an integer from 1 to the "
                                         r"128 tokens \(query \+ passage\) .* reads, got 200"):  # not cut to 128 unsaid
        build_pipeline(adi.corpus, adi.queries, adi.qrels, _settings(models, rerank_max_length=200), cache_dir=cache,
                       log=lambda m: None)
    assert list(cache.iterdir()) == []


def test_corpus_only_pipeline_needs_no_judgements(adi, models, tmp_path):
    """No labels: BM25 >> a dense stage fusing BM25, the pseudo-query adapter and the base model in equal
    thirds (the rule fixed in advance); no reranker unless asked for. The ensemble survives save and load."""
    b = build_pipeline(adi.corpus, settings=_settings(models, corpus_only=True), cache_dir=tmp_path, log=lambda m: None)
    assert [s.name for s in b.pipeline.stages] == ["bm25", "dense"]
    dense = b.pipeline.stages[1]
    assert dense.base_ensemble and dense.fusion.weights == (0.333333,) * 3 and dense.k == 50  # the last stage: BM25's k
    assert b.info["held_out"] == [] and b.info["split"].startswith("none") and "rerank" not in b.info["stages"]
    assert b.info["train_seconds"] == b.info["stages"]["dense"]["train"]["seconds"]
    save_pipeline(b.pipeline, tmp_path / "pipe", adi.corpus, b.info)
    loaded, _, _ = load_pipeline(tmp_path / "pipe")
    assert loaded.stages[1].base_ensemble
    assert "the adapted and the untouched base model fused" in (tmp_path / "pipe" / "README.md").read_text()
    _rankings_equal(b.pipeline.search(adi.queries), loaded.search(adi.queries))
    with_rerank = build_pipeline(adi.corpus, settings=_settings(models, corpus_only=True, corpus_reranker=True,
                                                                rerank_max_items=40, corpus_rerank_depth=10),
                                 cache_dir=tmp_path, log=lambda m: None)
    _, dense, rerank = with_rerank.pipeline.stages
    assert dense.base_ensemble and rerank.fusion.weights == (0.5, 0.5) and rerank.k == 10
    with pytest.raises(ValueError, match="corpus_only"):
        build_pipeline(adi.corpus, settings=_settings(models), cache_dir=tmp_path)


def test_runner_corpus_only_conditions(datasets_root, models, tmp_path):
    """`make benchmark-corpus`'s conditions (benchmarks/corpus_only.toml) on ADI with tiny models: RRF of BM25 and
    the base model is the baseline every other condition is tested against; the corpus-only pipeline has two
    stages and says how long it trained."""
    import tomllib

    real = tomllib.loads((REPO / "benchmarks" / "corpus_only.toml").read_text())
    assert real["baseline"] == "rrf" and set(real["datasets"]) == {"cranfield", "medline", "adi"}
    config = tmp_path / "corpus.toml"
    config.write_text(f'split = "test"\nbaseline = "rrf"\ndatasets = ["adi"]\nconditions = {json.dumps(real["conditions"])}\n')
    out = tmp_path / "out"
    assert bench_main(["run", "--config", str(config), "--datasets-root", str(datasets_root), "--output", str(out),
                       "--cache-dir", str(tmp_path / "cache"), "--latency-queries", "2", "--bm25-k", "50",
                       "--neighbours", "20", "--dense-k", "20", "--rerank-depths", "10", "--dense-model", models["dense"],
                       "--dense-epochs", "1"]) == 0
    by = {r["pipeline"]: r for r in json.loads((out / "summary.json").read_text())}
    assert set(by) == {"bm25", "dense", "rrf", "full-corpus"}
    assert all(by[n]["significance"]["baseline"] == "rrf" for n in ("bm25", "dense", "full-corpus"))
    assert [s["name"] for s in by["full-corpus"]["stages"]] == ["bm25", "dense"]
    assert by["full-corpus"]["train_seconds"] > 0


def test_corpus_designs_scores_the_pipelines_own_fusion(datasets_root, models, tmp_path, capsys):
    """`python -m benchmarks corpus-designs`: every label-free design over the corpus-only pipeline's parts; the one
    marked as the pipeline's scores exactly what the trained pipeline scores."""
    from benchmarks.corpus_designs import DESIGNS, PIPELINE_DESIGN

    args = ["corpus-designs", "--dataset", str(datasets_root / "adi"), "--split", "test", "--output", str(tmp_path / "o"),
            "--cache-dir", str(tmp_path / "cache"), "--dense-model", models["dense"], "--dense-epochs", "1",
            "--bm25-k", "50", "--neighbours", "20", "--dense-k", "20", "--rerank-depths", "10"]
    assert bench_main(args) == 0
    assert "(the pipeline's)" in capsys.readouterr().out
    result = json.loads((tmp_path / "o" / "corpus_designs.json").read_text())
    by = {r["design"]: r for r in result["rows"]}
    assert {d for d in DESIGNS if d != PIPELINE_DESIGN} | {f"{PIPELINE_DESIGN} (the pipeline's)"} <= set(by)
    adi = load_dataset(datasets_root / "adi", "test")
    built = build_pipeline(adi.corpus, settings=_settings(models, corpus_only=True, rerank_depths=(10,)),
                           cache_dir=tmp_path / "cache", log=lambda m: None)  # the same adapter, from the cache
    own = evaluate(built.pipeline.search(adi.queries), adi.qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    assert by[f"{PIPELINE_DESIGN} (the pipeline's)"]["nDCG@10"] == pytest.approx(own, abs=5e-5)
    assert result["queries"] == 35 and result["adapter"]["seconds"] > 0


@pytest.mark.slow
def test_train_cli_runner_full_saved_folder_and_config(datasets_root, models, tmp_path):
    """`python -m retrieval train`, then the runner on `full`, `bm25>>ce`, the saved folder and a config with
    expected figures; significance against bm25 and the plots."""
    from retrieval.__main__ import main as retrieval_main
    from retrieval.cli import run_cli

    cache, pipe = tmp_path / "cache", tmp_path / "pipe"
    flags = ["--dense-model", models["dense"], "--rerank-model", models["rerank"], "--rerank-precision", "float32",
             "--dense-epochs", "1", "--rerank-epochs", "1", "--rerank-depths", "5", "10"]
    assert retrieval_main(["train", "--dataset", str(datasets_root / "adi"), "--split", "test", "--dev-split", "test",
                           "--output", str(pipe), "--cache-dir", str(cache), "--bm25-k", "50", "--dense-k", "20",
                           "--neighbours", "20", *flags]) == 0
    assert (pipe / "pipeline.json").is_file() and (pipe / "test_nDCG@10.json").is_file()
    card = (pipe / "README.md").read_text()
    assert card.startswith("# Retrieval pipeline") and "| rerank | rerank |" in card and "reranker alone" in card
    assert (pipe / "stages" / "dense" / "encoder" / "README.md").read_text().startswith("# LoRA bi-encoder")
    assert run_cli(retrieval_main, ["train", "--dataset", str(datasets_root / "adi"), "--split", "test", "--output",
                                    str(pipe), *flags]) == 2  # exists, no --overwrite

    # `python -m retrieval search`: a TREC run of the saved pipeline; --k cuts the ranking, never the reranker's depth
    topics = datasets_root / "adi" / "queries.jsonl"
    runs = {k: tmp_path / f"run{k}.trec" for k in (3, 10)}
    for k, run in runs.items():
        assert retrieval_main(["search", "--pipeline", str(pipe), "--topics", str(topics), "--output", str(run),
                               "--k", str(k), "--batch", "7"]) == 0
    top3, top10 = (Ranking.from_trec(runs[k]) for k in (3, 10))
    adi = load_dataset(datasets_root / "adi", "test")
    assert set(top10.scores) == set(adi.queries)
    assert all([d for d, _ in top3.ranked(q)] == [d for d, _ in top10.ranked(q)][:3] for q in adi.queries)
    assert {len(top10.scores[q]) for q in adi.queries} == {10}
    assert runs[3].read_text().split("\n")[0].split()[-1] == "pipe"
    dev_figures = json.loads((pipe / "test_nDCG@10.json").read_text())["nDCG@10"]
    assert evaluate(top10, adi.qrels, ["nDCG@10"]).aggregate["nDCG@10"] == pytest.approx(dev_figures["rerank"])
    assert run_cli(retrieval_main, ["search", "--pipeline", str(pipe), "--topics", str(topics), "--output",
                                    str(runs[3])]) == 2  # exists, no --overwrite

    out = tmp_path / "out"
    config = tmp_path / "bench.toml"
    config.write_text(f'split = "test"\ntrain_split = "test"\nbaseline = "bm25"\ndatasets = ["adi"]\n'
                      f'conditions = ["bm25", "bm25>>ce", "full", "{pipe}"]\n\n[expected.adi]\n'
                      f'bm25 = {{ "nDCG@10" = 0.0, tolerance = 0.001 }}\n')  # far below: reported as "above", passes
    args = ["run", "--config", str(config), "--datasets-root", str(datasets_root), "--output", str(out),
            "--index-dir", str(cache), "--latency-queries", "3", "--bm25-k", "50", "--dense-k", "20", "--neighbours", "20", *flags,
            "--rerank-budget-ms", "1e6"]  # every depth fits: the choice `pipe` made
    assert bench_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    by = {r["pipeline"]: r for r in summary}
    assert set(by) == {"bm25", "bm25>>ce", "full", "pipe"}
    for name in ("bm25>>ce", "full", "pipe"):
        sig = by[name]["significance"]
        assert sig["baseline"] == "bm25" and 0.0 <= sig["p_value"] <= 1.0 and sig["queries"] == by["bm25"]["queries"]
        assert by[name]["train_seconds"] > 0
    assert [s["name"] for s in by["full"]["stages"]] == ["bm25", "dense", "rerank"]
    for name in ("full", "bm25>>ce"):  # each timed behind its own first stages
        budget = by[name]["fusion"]["budget"]
        assert budget["met"] and budget["budget_ms"] == 1e6 and list(budget["p50_ms"]) == ["5", "10"]
        assert "Latency budget 1e+06 ms a query" in (out / "adi" / name / "report.md").read_text()
    assert by["full"]["index_bytes"] > by["bm25"]["index_bytes"] > 0
    # the saved folder evaluated as-is gives what `full` (same data, same cached adapters) gives
    assert by["pipe"]["metrics"] == pytest.approx(by["full"]["metrics"])
    assert (out / "adi" / "full" / "pipeline" / "pipeline.json").is_file()
    assert f"| data | `{datasets_root / 'adi'}`, split `test` |" in (out / "adi" / "full" / "pipeline" / "README.md").read_text()
    for png in ("stage_quality.png", "stage_latency.png"):
        assert (out / "adi" / png).stat().st_size > 1000
    assert json.loads((out / "expected.json").read_text())[0]["status"] == "above"
    # an expectation that is not met fails the run
    config.write_text(config.read_text().replace('"nDCG@10" = 0.0', '"nDCG@10" = 0.99'))
    assert bench_main(args) == 1
    assert json.loads((out / "expected.json").read_text())[0]["status"] == "below"
    # a dataset the saved pipeline was not built for is refused
    with pytest.raises(PipelineMismatch, match="another corpus"):
        bench_main(["run", "--dataset", str(datasets_root / "cranfield"), "--split", "test", "--pipeline", str(pipe),
                    "--output", str(tmp_path / "out2"), "--latency-queries", "2"])


def test_gate_study_runs_on_a_trained_pipeline(built, adi):
    from benchmarks.gate import collect, study

    b, _ = built
    pipe, info = b.pipeline, b.info
    qids = info["held_out"]
    queries, qrels = adi.queries.subset(qids), {q: adi.qrels[q] for q in qids}
    data, depth = collect(pipe, queries, qrels)
    assert depth == pipe.stages[2].k and [p.qid for p in data] == list(queries)
    dim = pipe.stages[1].index.dim
    for p in data:
        assert len(p.docs) == len(p.z_in) == len(p.z_re) <= depth
        assert p.inputs["embedding"].shape == (len(p.docs), 2 * dim) and p.inputs["score"].shape == (len(p.docs), 4)
        assert abs(p.z_in.mean()) < 1e-9 and abs(p.z_re.mean()) < 1e-9
    result = study(data, qrels, k=2, seed=0)
    assert {r["fusion"] for r in result["rows"]} == {"global", "embedding", "score"}
    assert all(0.0 <= r["nDCG@10"] <= 1.0 for r in result["rows"])


def test_cutoff_tuning_respects_the_budget(built, adi):
    b, _ = built
    pipe = b.pipeline
    fitted, pipe.stages[2].fusion = pipe.stages[2].fusion, Fusion("weighted", (0.5, 0.5))  # a reranker that runs
    try:
        _tune_within_budgets(b, pipe, adi)
    finally:
        pipe.stages[2].fusion = fitted


def _tune_within_budgets(b, pipe, adi):
    from benchmarks.cutoffs import tune

    before = (pipe.stages[0].k, pipe.stages[2].k)
    qids = b.info["held_out"]
    q, qrels = adi.queries.subset(qids), {x: adi.qrels[x] for x in qids}
    free = tune(pipe, q, qrels, budget_ms=1e9, bm25_ks=(20, 50), depths=(0, 5, 10), latency_queries=3)
    assert len(free["grid"]) == 6 and (pipe.stages[0].k, pipe.stages[2].k) == before  # the pipeline is left as it was
    assert free["chosen"]["nDCG@10"] == max(r["nDCG@10"] for r in free["grid"])
    # each (query, document) pair went through the reranker once, however many settings contain it
    assert 0 < free["pairs_scored"] <= len(qids) * 10 * 2
    lat = free["stage_latency_ms"]
    for r in free["grid"]:
        assert r["latency_ms"] == pytest.approx(lat["bm25"][r["bm25_k"]] + lat["dense"][r["bm25_k"]] + lat["rerank"][r["rerank_k"]])
    cheapest = min(r["latency_ms"] for r in free["grid"])
    tight = tune(pipe, q, qrels, budget_ms=cheapest * 1.0001 + 1e-9, bm25_ks=(20, 50), depths=(0, 5, 10), latency_queries=3)
    assert tight["chosen"] is None or tight["chosen"]["latency_ms"] <= cheapest * 1.0001 + 1e-9
    assert any(r["pareto"] for r in free["grid"])
    with pytest.raises(ValueError, match="budget"):
        tune(pipe, q, qrels, budget_ms=0)


def test_dense_study_trains_what_the_build_trains_and_judges_on_its_held_out_queries(built, models, datasets_root,
                                                                                    tmp_path):
    """``python -m benchmarks dense-study``: for the pipeline's seed and its default dropout (none) the study reuses
    the build's cached adapter and judges on the build's held-out queries; another dropout trains another adapter;
    the pooled rows compare each variant with the first on the same queries."""
    b, cache = built
    out = tmp_path / "dense-study"
    assert bench_main(["dense-study", "--dataset", str(datasets_root / "adi"), "--split", "test", "--seeds", "1",
                       "--dropouts", "all", "none", "--epochs", "1", "--fit-queries", "10", "--model", models["dense"],
                       "--cache-dir", str(cache), "--output", str(out)]) == 0
    report = json.loads((out / "dense_study.json").read_text())
    every, none = report["rows"]
    assert none["cached_at"] == b.info["stages"]["dense"]["train"]["cached_at"] != every["cached_at"]
    assert sorted(none["alone"]) == sorted(none["fused"]) == sorted(b.info["held_out"])
    first, second = report["pooled"]
    assert first["alone_p"] is None and second["queries"] == len(b.info["held_out"])
    mean = sum(none["fused"].values()) / len(none["fused"])
    assert second["fused"] == pytest.approx(mean)
    assert second["fused_vs_first"] == pytest.approx(mean - sum(every["fused"].values()) / len(every["fused"]))
    assert "Pooled over seeds 1" in (out / "dense_study.md").read_text()


def test_rerank_study_reproduces_the_builds_choice_and_scores_out_of_fold(built, adi, datasets_root, tmp_path):
    from benchmarks.rerank_study import set_length

    b, _ = built
    # the tiny pipeline was trained on ADI's only split, "test": say so, so that its held-out queries are the judges
    folder = save_pipeline(b.pipeline, tmp_path / "pipe", b.corpus, {**b.info, "split": "test"})
    rerank = b.pipeline.stages[2]
    out = tmp_path / "study"
    assert bench_main(["rerank-study", "--pipeline", str(folder), "--dataset", str(datasets_root / "adi"),
                       "--split", "test", "--report-split", "test", "--max-length", "64", str(rerank.reranker.max_length),
                       "--depths", "5", "10", "--folds", "2", "--output", str(out)]) == 0
    rows = json.loads((out / "rerank_study.json").read_text())["rows"]
    assert [r["reads"] for r in rows] == [64, rerank.reranker.max_length] and rows[0]["held_out"]
    held = b.info["held_out"]
    queries, qrels = adi.queries.subset(held), {q: adi.qrels[q] for q in held}
    as_saved = rows[1]
    # in sample, the study chooses what the build chose on the same held-out queries, and scores what the pipeline scores
    assert (as_saved["depth"], as_saved["weight"]) == (rerank.k, pytest.approx(rerank.fusion.weights[1]))
    full = evaluate(b.pipeline.search(queries), qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    assert as_saved["fused_in_sample"] == pytest.approx(full)
    assert set(as_saved["per_query"]["out_of_fold"]) == set(held) and as_saved["queries"] == len(held)
    assert as_saved["vs_first_row"]["p_value"] is not None and rows[0]["vs_first_row"]["delta"] == 0.0
    assert as_saved["report"]["queries"] == len([q for q in adi.queries if q in adi.qrels])
    assert "out of fold" in (out / "rerank_study.md").read_text()
    for bad in (8, 10_000, True):
        with pytest.raises(ValueError, match="max-length"):
            set_length(rerank.reranker, bad)


def test_rerank_study_share_reranks_the_queries_the_first_stages_are_least_sure_of(datasets_root, tmp_path):
    """``rerank-study --share``: out of fold, the reranker runs for that share of queries (the margin fitted on the
    other folds) and the rest keep the first two stages' figure. Made-up candidates: where the first stages' leader
    is far ahead it is the relevant document, elsewhere the relevant one is further down and the reranker knows it."""
    from benchmarks.gate import Pairs
    from benchmarks.rerank_study import measure
    from retrieval.stages.fusion import zscore

    rng = np.random.default_rng(0)
    data, qrels = [], {}
    for i in range(40):
        sure = i % 2 == 0
        incoming = np.sort(rng.normal(size=10))[::-1] + (np.r_[6.0, np.zeros(9)] if sure else 0.0)
        relevant = 0 if sure else int(rng.integers(1, 10))
        docs = [f"d{j}" for j in range(10)]
        qrels[f"q{i}"] = {docs[relevant]: 1}
        data.append(Pairs(f"q{i}", docs, zscore(incoming), zscore(np.eye(10)[relevant] + 0.01 * rng.normal(size=10)),
                          np.eye(10)[relevant], {}))
    score = lambda split, depths: {d: data for d in depths}  # noqa: E731
    every, half = (measure(score, (None, qrels, None), [10], 4, 0, share=share) for share in (1.0, 0.5))
    assert every["reranked_out_of_fold"] == 40 and every["margin"] is None and every["share"] == 1.0
    assert 15 <= half["reranked_out_of_fold"] <= 25 and half["margin"] is not None
    assert half["fused_out_of_fold"] == pytest.approx(every["fused_out_of_fold"])  # the reranker mattered where it ran
    assert every["fused_out_of_fold"] > every["first_two"] + 0.2
    with pytest.raises(ValueError, match="--share 1.5"):
        bench_main(["rerank-study", "--pipeline", str(tmp_path), "--dataset", str(datasets_root / "adi"),
                    "--share", "1.5", "--output", str(tmp_path / "out"), "--debug"])


def test_rerank_study_averages_rerankers_of_one_seed_and_refuses_others(built, datasets_root, tmp_path):
    """``rerank-study --average``: a last row scores with the pipelines' rerankers together (z-scores averaged, then
    z-scored again); the same reranker twice is the reranker itself; pipelines with other held-out queries, or one
    pipeline, are refused."""
    from benchmarks.gate import Pairs
    from benchmarks.rerank_study import averaged
    from retrieval.stages.fusion import zscore

    b, _ = built
    one = save_pipeline(b.pipeline, tmp_path / "one", b.corpus, {**b.info, "split": "test"})
    two = save_pipeline(b.pipeline, tmp_path / "two", b.corpus, {**b.info, "split": "test"})
    out = tmp_path / "study"
    common = ["--dataset", str(datasets_root / "adi"), "--split", "test", "--depths", "5", "10", "--folds", "2",
              "--output", str(out)]
    assert bench_main(["rerank-study", "--pipeline", str(one), "--pipeline", str(two), "--average", *common]) == 0
    rows = json.loads((out / "rerank_study.json").read_text())["rows"]
    assert len(rows) == 3 and rows[2]["pipeline"].startswith("average of")
    assert rows[2]["per_query"]["out_of_fold"] == pytest.approx(rows[0]["per_query"]["out_of_fold"])
    assert (rows[2]["depth"], rows[2]["weight"]) == (rows[0]["depth"], pytest.approx(rows[0]["weight"]))
    assert "average of" in (out / "rerank_study.md").read_text()

    labels = np.array([1.0, 0.0, 0.0])
    a = {5: [Pairs("q", ["x", "y", "z"], zscore([3, 2, 1]), zscore([1.0, 3.0, 2.0]), labels, {})]}
    c = {5: [Pairs("q", ["x", "y", "z"], zscore([3, 2, 1]), zscore([5.0, 1.0, 4.0]), labels, {})]}
    both = averaged([a, c])[5][0]
    assert both.z_re == pytest.approx(zscore((zscore([1.0, 3.0, 2.0]) + zscore([5.0, 1.0, 4.0])) / 2))
    assert both.z_re.std() == pytest.approx(1.0) and int(np.argmax(both.z_re)) == 2 and both.docs == ["x", "y", "z"]
    assert both.z_in == pytest.approx(a[5][0].z_in) and both.labels.tolist() == labels.tolist()

    held = b.info["held_out"]
    other = save_pipeline(b.pipeline, tmp_path / "other", b.corpus, {**b.info, "split": "test", "held_out": held[:-1]})
    with pytest.raises(ValueError, match="same seed"):
        bench_main(["rerank-study", "--pipeline", str(one), "--pipeline", str(other), "--average", *common])
    with pytest.raises(ValueError, match="at least two"):
        bench_main(["rerank-study", "--pipeline", str(one), "--average", *common])


def test_rerank_pool_joins_seeds_row_by_row(tmp_path):
    """``rerank-pool``: row i of each seed's study pooled over both seeds' queries (one held out by both counts
    twice: other pipelines judge it), compared with row 1 by a paired t-test over all of them; a study given twice,
    or studies with other numbers of rows, are refused."""
    from scipy.stats import ttest_rel

    def row(name, oof, first):
        return {"pipeline": name, "depth": 10, "weight": 0.5, "per_query": {"out_of_fold": oof, "first_two": first}}

    seeds = {"s4": ({"a": 0.5, "b": 0.7}, {"a": 0.6, "b": 0.6}), "s5": ({"a": 0.2, "d": 0.9, "e": 0.4},
                                                                       {"a": 0.3, "d": 0.95, "e": 0.35})}
    first = {"a": 0.4, "b": 0.5, "d": 0.8, "e": 0.3}
    for seed, (n3, n2) in seeds.items():
        (tmp_path / seed).mkdir()
        (tmp_path / seed / "rerank_study.json").write_text(json.dumps(
            {"rows": [row(f"{seed}-n3", n3, {q: first[q] for q in n3}), row(f"{seed}-n2", n2, {q: first[q] for q in n2})]}))
    out = tmp_path / "pool"
    assert bench_main(["rerank-pool", "--study", str(tmp_path / "s4"), str(tmp_path / "s5"), "--output", str(out)]) == 0
    rows = json.loads((out / "rerank_pool.json").read_text())["rows"]
    n3 = [*seeds["s4"][0].values(), *seeds["s5"][0].values()]
    n2 = [*seeds["s4"][1].values(), *seeds["s5"][1].values()]
    assert rows[1]["pipelines"] == ["s4-n2", "s5-n2"] and rows[1]["queries"] == 5
    assert rows[1]["fused_out_of_fold"] == pytest.approx(sum(n2) / 5)
    assert rows[0]["first_two"] == pytest.approx((0.4 + 0.5 + 0.4 + 0.8 + 0.3) / 5)
    assert rows[1]["vs_first_row"]["delta"] == pytest.approx((sum(n2) - sum(n3)) / 5)
    assert rows[1]["vs_first_row"]["p_value"] == pytest.approx(ttest_rel(n2, n3).pvalue)
    assert "s4-n2, s5-n2" in (out / "rerank_pool.md").read_text()
    with pytest.raises(ValueError, match="a study twice"):
        bench_main(["rerank-pool", "--study", str(tmp_path / "s4"), str(tmp_path / "s4"), "--output", str(out)])
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "rerank_study.json").write_text(json.dumps({"rows": [row("x", {"z": 0.1}, {"z": 0.1})]}))
    with pytest.raises(ValueError, match="as many rows"):
        bench_main(["rerank-pool", "--study", str(tmp_path / "s4"), str(tmp_path / "one"), "--output", str(out)])
    (tmp_path / "one" / "rerank_study.json").write_text(json.dumps({"rows": [{"pipeline": "y"}]}))
    with pytest.raises(ValueError, match="not a rerank-study output"):
        bench_main(["rerank-pool", "--study", str(tmp_path / "s4"), str(tmp_path / "one"), "--output", str(out)])
    with pytest.raises(FileNotFoundError, match="rerank-study output"):
        bench_main(["rerank-pool", "--study", str(tmp_path / "nope"), "--output", str(out)])


def test_ranking_teacher_answers_with_the_systems_scores(adi, adi_bm25s):
    from retrieval.pipeline.teacher import RankingTeacher

    teacher = RankingTeacher(adi_bm25s, adi.corpus)
    qid = next(iter(adi.queries))
    query = adi.queries[qid]
    ranked = adi_bm25s.search(adi.queries.subset([qid])).ranked(qid)
    unranked = next(d for d in adi.corpus if d not in dict(ranked))
    docs = [adi.corpus[d].contents for d, _ in ranked[:3]] + [adi.corpus[ranked[4][0]].text, adi.corpus[unranked].contents]
    scores = teacher([query] * 5, docs)
    assert scores[:4] == pytest.approx([s for _, s in ranked[:3]] + [ranked[4][1]])
    assert scores[4] == pytest.approx(min(s for _, s in ranked))  # not ranked: the query's lowest score
    with pytest.raises(ValueError, match="no document of its corpus"):
        teacher([query], ["a text that is in no document"])
    named = RankingTeacher(adi_bm25s, adi.corpus, passages={"the first document cut short": ranked[0][0]})
    assert named([query], ["the first document cut short"]) == pytest.approx([ranked[0][1]])
    with pytest.raises(ValueError, match="no document of the corpus"):
        RankingTeacher(adi_bm25s, adi.corpus, passages={"text": "no-such-id"})
    with pytest.raises(ValueError, match="scores pairs"):
        teacher([query, query], docs[:1])
    z = RankingTeacher(adi_bm25s, adi.corpus, zscore=True)([query] * 5, docs)  # over the query's whole ranking
    raw = np.array([s for _, s in ranked])
    assert z == pytest.approx(list((np.array(scores) - raw.mean()) / raw.std()))


def _built_beside(built, adi, models, **kw):
    """The module's pipeline built again with ``kw`` added, and its reranker's training record; the first two
    stages' fusion and the held-out queries are the same as without them (fitted before the reranker trains)."""
    b, cache = built
    d = build_pipeline(adi.corpus, adi.queries, adi.qrels, _settings(models, **BUILT, **kw), cache_dir=cache,
                       log=lambda m: None)
    assert d.pipeline.stages[1].fusion == b.pipeline.stages[1].fusion and d.info["held_out"] == b.info["held_out"]
    return d, d.info["stages"]["rerank"]["train"]


def _rerankers_differ(built, adi, other) -> bool:
    """Whether ``other``'s reranker scores three held-out queries' top documents otherwise than the module's."""
    b, _ = built
    q = adi.queries.subset(b.info["held_out"][:3])
    docs = [adi.corpus[next(iter(b.pipeline.stages[0].search(q)[x]))].contents for x in q]
    plain, changed = (p.stages[2].reranker.score([q[x] for x in q], docs) for p in (b.pipeline, other.pipeline))
    return not plain == pytest.approx(changed)


def test_a_reranker_distilled_from_the_first_two_stages(built, adi, models):
    """``rerank_distill``: the reranker's training groups are pulled towards the first two stages' fused scores."""
    d, train = _built_beside(built, adi, models, rerank_distill=0.5)
    assert train["teacher"]["fusion"] == d.pipeline.stages[1].fusion.to_dict()
    assert train["settings"]["distill_weight"] == 0.5 and "teacher" not in built[0].info["stages"]["rerank"]["train"]
    assert _rerankers_differ(built, adi, d)  # another adapter: the KL term changed the training
    with pytest.raises(ValueError, match="rerank_distill"):
        _settings(models, rerank_distill=1.5)


def test_the_rerankers_learning_rate_reaches_its_training(built, adi, models):
    """``rerank_lr``: the LoRA weights' learning rate of the reranker's training (the head's stays)."""
    d, train = _built_beside(built, adi, models, rerank_lr=5e-3)
    plain = built[0].info["stages"]["rerank"]["train"]["settings"]
    assert plain["lr"] == _settings(models).rerank_lr and train["settings"]["lr"] == 5e-3
    assert train["settings"]["head_lr"] == plain["head_lr"]
    assert _rerankers_differ(built, adi, d)  # another adapter: the rate changed the training


def test_a_reranker_trained_on_the_first_two_stages_residual(built, adi, models):
    """``rerank_residual``: the reranker's loss sees the first two stages' z-scored fused score beside each logit;
    ``rerank_residual_base="bm25"`` takes BM25's instead."""
    d, train = _built_beside(built, adi, models, rerank_residual=1.0)
    assert train["residual_base"]["fusion"] == d.pipeline.stages[1].fusion.to_dict() and train["residual_base"]["zscore"]
    assert train["settings"]["residual"] == 1.0 and "residual_base" not in built[0].info["stages"]["rerank"]["train"]
    assert _rerankers_differ(built, adi, d)  # another adapter: the base changed the training
    _, on_bm25 = _built_beside(built, adi, models, rerank_residual=1.0, rerank_residual_base="bm25")
    assert set(on_bm25["residual_base"]) == {"bm25", "zscore"}
    with pytest.raises(ValueError, match="rerank_residual_base must be one of"):
        _settings(models, rerank_residual=1.0, rerank_residual_base="dense")
    with pytest.raises(ValueError, match="rerank_residual must be a finite number"):
        _settings(models, rerank_residual=-0.5)
    with pytest.raises(ValueError, match="rerank_residual is 0: set it too"):
        _settings(models, rerank_residual_base="bm25")


def test_dropout_settings_reach_both_trainings(models):
    """``rerank_dropout`` / ``dense_dropout``: all / no-attention / none become the training settings' two switches;
    "all" records neither (the dense settings not even ``dropout``), so the cache keys of adapters trained with every
    dropout before a setting existed still match."""
    expected = {"all": (True, True), "no-attention": (True, False), "none": (False, False)}
    for value, switches in expected.items():
        s = _settings(models, rerank_dropout=value, dense_dropout=value)
        rs = s.rerank_train_settings()
        ds = default_settings("query", s.dense_epochs, dropout=s.dense_dropout)
        assert (rs.dropout, rs.attention_dropout) == switches == (ds.dropout, ds.attention_dropout)
        assert ("attention_dropout" in rs.to_dict()) == (value != "all") == ("attention_dropout" in ds.to_dict())
        assert ("dropout" in ds.to_dict()) == (value != "all")
    assert PipelineSettings().rerank_dropout == "none" and PipelineSettings().dense_dropout is None
    # by default none for the query-side adapter trained on judgements, every one where that was not measured
    assert default_settings("query").dropout is False and default_settings("corpus-query").dropout is True
    for name in ("rerank_dropout", "dense_dropout"):
        with pytest.raises(ValueError, match=f"{name} must be one of"):
            _settings(models, **{name: "attention"})
