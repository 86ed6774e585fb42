"""Dense stage and query-only training with a tiny random BERT, on ADI."""

import hashlib

import numpy as np
import pytest

from encoders import BiEncoder, LoraSettings
from encoders.train import DenseTrainSettings, split_queries, train_query_adapter
from retrieval.index.faiss import IndexMismatch
from retrieval.stages.dense import Dense, document_index
from retrieval.stages.fusion import Fusion
from retrieval.types import Ranking


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return BiEncoder(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def adi_index(tiny, adi, tmp_path_factory):
    index, built, path = document_index(tiny, adi.corpus, "Flat", cache_dir=tmp_path_factory.mktemp("dense"))
    assert built
    return index, path


def test_document_index_is_cached_by_encoder(tiny, adi, adi_index, tmp_path):
    index, path = adi_index
    again, built, same = document_index(tiny, adi.corpus, "Flat", cache_dir=path.parent)
    assert not built and same == path and again.ids == index.ids
    assert len(index) == 82


def test_retrieve_rescore_hybrid(tiny, adi, adi_index, adi_lucene, monkeypatch):
    index, _ = adi_index
    dense = Dense(tiny, index, mode="retrieve", k=10)
    r = dense.search(adi.queries)
    assert len(r) == 35 and all(len(v) == 10 for v in r.scores.values())
    bm25 = adi_lucene.search(adi.queries, k=20)
    # rescoring reads stored vectors: encoding a document at query time would be a bug
    monkeypatch.setattr(tiny, "encode_documents", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded")))
    rescored = Dense(tiny, index, mode="rescore", k=5).search(adi.queries, bm25)
    assert all(set(rescored.scores[q]) <= set(bm25.scores[q]) for q in adi.queries)
    q0 = next(iter(adi.queries))
    qv = tiny.encode_queries([adi.queries[q0]])[0]
    expected = {d: float(index.vectors[index.rows[d]] @ qv) for d in rescored.scores[q0]}
    assert rescored.scores[q0] == pytest.approx(expected, abs=1e-5)
    hybrid = Dense(tiny, index, mode="hybrid", k=30, fusion=Fusion("rrf", (1.0, 1.0))).search(adi.queries, bm25)
    assert any(set(hybrid.scores[q]) - set(bm25.scores[q]) for q in adi.queries), "hybrid adds ANN neighbours"
    only_bm25 = Dense(tiny, index, mode="hybrid", k=20, fusion=Fusion("weighted", (1.0, 0.0))).search(adi.queries, bm25)
    assert [d for d, _ in only_bm25.ranked(q0)][:5] == [d for d, _ in bm25.ranked(q0)][:5]


def test_pipeline_with_bm25(tiny, adi, adi_index, adi_lucene):
    index, _ = adi_index
    pipe = adi_lucene >> Dense(tiny, index, mode="hybrid", k=10)
    r = pipe.search(adi.queries, keep_stages=True)
    assert [t.name for t in r.trace] == ["bm25", "dense"] and set(r.stages) == {"bm25", "dense"}


def test_dense_input_errors(tiny, tiny_model_dir, adi_index):
    index, _ = adi_index
    with pytest.raises(ValueError, match="needs candidates"):
        Dense(tiny, index, mode="hybrid").search({"q": "x"})
    with pytest.raises(ValueError, match="mode must be one of"):
        Dense(tiny, index, mode="sparse")
    other = BiEncoder(tiny_model_dir, device="cpu")
    other.add_lora(LoraSettings(r=2, side="both"))
    import torch

    with torch.no_grad():
        for n, p in other.st.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    with pytest.raises(IndexMismatch, match="rebuild the index"):
        Dense(other, index)
    assert Dense(tiny, index, mode="retrieve").search({}).scores == {}
    assert Dense(tiny, index, mode="rescore").search({"q": "x"}, Ranking({"q": {"unknown-doc": 1.0}})).scores == {"q": {}}


def _nonzero_adapter(enc, side: str, value: float = 0.05):
    import torch

    enc.add_lora(LoraSettings(r=2, side=side))
    with torch.no_grad():
        for n, p in enc.st.named_parameters():
            if "lora_B" in n:
                p.fill_(value)
    return enc


def test_base_ensemble_fuses_bm25_the_adapted_and_the_base_model(tiny_model_dir, adi, adi_index, adi_lucene):
    """Dense(base_ensemble=True): three rankings — the incoming, the adapted model's, the untouched base
    model's (queries encoded as documents are) — under one fusion; equal thirds by default."""
    from retrieval.stages.fusion import weighted

    index, _ = adi_index
    enc = _nonzero_adapter(BiEncoder(tiny_model_dir, device="cpu"), "query")
    bm25 = adi_lucene.search(adi.queries, k=20)
    ens = Dense(enc, index, mode="hybrid", k=30, neighbours=10, base_ensemble=True)
    assert ens.fusion.weights == (0.333333,) * 3 and "base_ensemble=True" in repr(ens)
    base = BiEncoder(tiny_model_dir, device="cpu")  # the same weights with no adapter at all
    adapted = Dense(enc, index, mode="hybrid", neighbours=10).dense_scores(adi.queries, bm25)
    untouched = Dense(base, index, mode="hybrid", neighbours=10).dense_scores(adi.queries, bm25)
    assert any(adapted.scores[q] != untouched.scores[q] for q in adi.queries), "the adapter changes the query vectors"
    for q in list(adi.queries)[:5]:
        assert ens.base_scores(adi.queries.subset([q]), bm25).scores[q] == pytest.approx(untouched.scores[q], abs=1e-5)
    expected = weighted([bm25, adapted, untouched], (1 / 3,) * 3).top_k(30)
    got = ens.search(adi.queries, bm25)
    for q in adi.queries:
        assert [d for d, _ in got.ranked(q)][:10] == [d for d, _ in expected.ranked(q)][:10]
    # two rankings' worth of weights for three rankings is refused, not silently cut
    with pytest.raises(ValueError, match="3 rankings but 2 fusion weights"):
        Dense(enc, index, mode="hybrid", base_ensemble=True, fusion=Fusion("weighted", (0.5, 0.5))).search(adi.queries, bm25)


def test_base_ensemble_needs_base_documents_and_hybrid(tiny_model_dir, adi_index):
    index, _ = adi_index
    with pytest.raises(ValueError, match="only mode='hybrid'"):
        Dense(BiEncoder(tiny_model_dir, device="cpu"), index, mode="retrieve", base_ensemble=True)
    both = _nonzero_adapter(BiEncoder(tiny_model_dir, device="cpu"), "both")
    with pytest.raises(ValueError, match="needs the base model on the document side"):
        Dense(both, index, mode="hybrid", base_ensemble=True, check_index=False)


def test_split_queries_is_seeded_and_disjoint():
    ids = [str(i) for i in range(100)]
    a, b = split_queries(ids, 0.2, seed=1)
    assert len(b) == 20 and not set(a) & set(b) and split_queries(ids, 0.2, seed=1) == (a, b)
    with pytest.raises(ValueError, match="too few"):
        split_queries(["1"], 0.5, 0)


@pytest.mark.parametrize("variant", ["all", "none"])
def test_query_adapter_trains_with_the_dropout_its_settings_name(tiny_model_dir, adi, adi_index, variant):
    """``dropout="none"`` (``PipelineSettings.dense_dropout``): no dropout layer drops anything in the training
    steps' forward passes, the attention probabilities' and LoRA's included; ``all``: each drops its own ``p``.
    Either way every layer's ``p`` is as it was afterwards, and "all" records no switch in the settings (the cache
    keys of adapters trained before the setting existed)."""
    import torch

    from encoders.train import default_settings

    enc = BiEncoder(tiny_model_dir, device="cpu")
    settings = default_settings("query", 1, dropout=variant)
    settings.batch_size, settings.lora = 16, LoraSettings(r=4, side="query", dropout=0.1)
    assert ("dropout" in settings.to_dict()) == (variant != "all")
    module = enc.st
    before = {id(m): m.p for m in module.modules() if isinstance(m, torch.nn.Dropout)}
    assert before and all(p > 0 for p in before.values())
    seen = []
    forward = module.forward

    def recording(*args, **kwargs):  # in the training steps (the validation passes run without gradients): every
        if torch.is_grad_enabled():  # dropout layer is training, and drops its p (the attention kernel's too)
            seen.append([m.p for m in module.modules() if isinstance(m, torch.nn.Dropout) and m.training])
        return forward(*args, **kwargs)

    module.forward = recording
    try:
        train_query_adapter(enc, adi_index[0], adi.queries, adi.qrels, settings, progress=False)
    finally:
        module.forward = forward
    assert seen and len(seen[0]) > len(before)  # LoRA's dropout layers joined
    assert all((p == 0.0) == (variant == "none") for step in seen for p in step)
    assert {id(m): m.p for m in module.modules() if isinstance(m, torch.nn.Dropout) and id(m) in before} == before
    assert default_settings("query").to_dict() == default_settings("query", dropout="none").to_dict()
    with pytest.raises(ValueError, match="dense training dropout must be one of"):
        default_settings("query", dropout="some")


def test_query_only_training_leaves_the_index_untouched(tiny_model_dir, adi, tmp_path):
    enc = BiEncoder(tiny_model_dir, device="cpu")
    index, _, path = document_index(enc, adi.corpus, "Flat", cache_dir=tmp_path)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.iterdir()}
    vectors = index.vectors.copy()
    settings = DenseTrainSettings(epochs=2, batch_size=16, lr=1e-3, val_fraction=0.3,
                                  lora=LoraSettings(r=4, side="query"))
    result = train_query_adapter(enc, index, adi.queries, adi.qrels, settings, progress=False)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.val_queries + result.train_queries == 35
    assert result.best_val == max(h["val_nDCG@10"] for h in result.history)
    assert 0 < result.trainable_share < 0.05 and result.peak_memory_mb > 0
    assert np.array_equal(index.vectors, vectors)
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.iterdir()}
    # the adapted encoder still fits the index (documents use the base model)
    Dense(enc, index, mode="retrieve").search(adi.queries)


@pytest.mark.parametrize("mode", ["supervised", "corpus"])
def test_both_sides_training_runs_and_keeps_best_epoch(tiny_model_dir, adi, adi_lucene, mode):
    from encoders.train import train_adapter
    from retrieval.lora.examples import pseudo_examples, supervised_examples

    enc = BiEncoder(tiny_model_dir, device="cpu")
    base_fp = enc.fingerprint("document")
    examples = (supervised_examples(adi.corpus, adi.queries, adi.qrels) if mode == "supervised"
                else pseudo_examples(adi.corpus))
    assert examples and all(e.positives for e in examples)
    settings = DenseTrainSettings(mode=mode, epochs=2, batch_size=16, lr=1e-3, val_fraction=0.25,
                                  lora=LoraSettings(r=4, side="both"), doc_max_length=48)
    result = train_adapter(enc, adi.corpus, examples, adi_lucene, settings, progress=False, val_pool=10)
    assert len(result.history) == 3 and result.best_val == max(h["val_nDCG@10"] for h in result.history)
    assert enc.max_length == 64 and enc.st.max_seq_length == 64  # the training cut-off is undone
    assert enc.fingerprint("document") != base_fp  # documents now need their own index
    with pytest.raises(ValueError, match="adapt both sides"):
        train_adapter(enc, adi.corpus, examples, adi_lucene, DenseTrainSettings(mode=mode))


def test_pseudo_queries_do_not_copy_the_title_into_the_passage():
    from retrieval.lora.examples import pseudo_queries
    from retrieval.types import Corpus, Document

    corpus = Corpus([
        Document("1", "wing flutter at speed . we measured the flutter of a swept wing in a tunnel at many speeds and angles", "wing flutter at speed ."),
        Document("2", "first sentence is here. second sentence is longer and says more things about the topic at hand today."),
        Document("3", "too short"),
    ])
    pairs = {p.doc_id: p for p in pseudo_queries(corpus)}
    assert pairs["1"].query == "wing flutter at speed ." and not pairs["1"].passage.startswith("wing flutter")
    assert pairs["2"].query not in pairs["2"].passage
    assert "3" not in pairs
    # kind "sentence": a sentence of the text is the query, the title stays at the front of the rest
    titled = Corpus([Document("4", "Aspirin lowers the risk. It was given to 200 patients for a year. Strokes fell by "
                                   "half in the treated group.", "A trial of aspirin")])
    by_seed = {pseudo_queries(titled, seed, kind="sentence")[0].query for seed in range(20)}
    assert by_seed == {"Aspirin lowers the risk.", "It was given to 200 patients for a year.",
                       "Strokes fell by half in the treated group."}  # each sentence can be drawn, the title never
    for seed in range(5):
        pair = pseudo_queries(titled, seed, kind="sentence")[0]
        assert pair.passage.startswith("A trial of aspirin ") and pair.query not in pair.passage
        assert len(pair.passage.split()) + len(pair.query.split()) == len(titled["4"].contents.split())
    assert pseudo_queries(titled, kind="title")[0].query == "A trial of aspirin"
    with pytest.raises(ValueError, match="pseudo-query kind must be one of"):
        pseudo_queries(titled, kind="claims")


@pytest.mark.parametrize("mode", ["query", "corpus", "corpus-query"])
def test_train_cli(tiny_model_dir, datasets_root, tmp_path, mode):
    import json

    from encoders.train.__main__ import main

    out = tmp_path / "adapter"
    args = ["--dataset", str(datasets_root / "adi"), "--split", "test", "--mode", mode, "--output", str(out),
            "--model", str(tiny_model_dir), "--epochs", "1", "--rank", "2", "--batch-size", "16",
            "--val-fraction", "0.3", "--index-dir", str(tmp_path / "idx")]
    assert main(args) == 0
    result = json.loads((out / "train_result.json").read_text())
    assert result["settings"]["mode"] == mode and len(result["history"]) == 2
    enc = BiEncoder.load(out, device="cpu")
    assert enc.adapters["default"]["side"] == ("both" if mode == "corpus" else "query")
    with pytest.raises(FileExistsError, match="pass --overwrite"):  # before any training; one line through run_cli
        main(args)
