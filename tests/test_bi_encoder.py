"""BiEncoder with a tiny random BERT: encoding, LoRA lifecycle, save/load, merge."""

import json
import warnings

import numpy as np
import pytest
import torch

from encoders import BiEncoder, LoraSettings
from retrieval.cpu import x86
from retrieval.types import Document

TEXTS = ["protein folding in cells", "wing aerodynamics at high speed", "a", "retrieval of documents " * 20]


def _perturb(enc, seed=0):
    """Give LoRA's B matrices non-zero values (fresh LoRA is an exact no-op)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in enc.st.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_encode_shapes_and_normalisation(tiny_model_dir):
    enc = BiEncoder(tiny_model_dir, device="cpu")
    q = enc.encode_queries(TEXTS)
    d = enc.encode_documents([Document("1", "folding in cells", "protein"), "plain string"])
    assert q.dtype == np.float32 and q.shape == (4, 32) and d.shape == (2, 32)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    # a Document is encoded as title + " " + text
    assert np.allclose(d[0], enc.encode_queries(["protein folding in cells"])[0], atol=1e-5)
    assert enc.encode_queries([]).shape == (0, 32)
    with pytest.raises(TypeError, match="not one string"):
        enc.encode_queries("one string")
    with pytest.raises(TypeError, match=r"queries\[1\] is int"):
        enc.encode_queries(["ok", 3])


def test_query_side_adapter_leaves_documents_alone(tiny_model_dir):
    enc = BiEncoder(tiny_model_dir, device="cpu")
    base_q, base_d = enc.encode_queries(TEXTS), enc.encode_documents(TEXTS)
    doc_fp = enc.fingerprint("document")
    enc.add_lora(LoraSettings(r=4, side="query", target_modules=("query", "value")))
    assert 0 < enc.trainable_share() < 0.05
    _perturb(enc)
    assert not np.allclose(enc.encode_queries(TEXTS), base_q, atol=1e-3)
    assert np.array_equal(enc.encode_documents(TEXTS), base_d)
    assert enc.fingerprint("document") == doc_fp and enc.fingerprint("query") != doc_fp
    enc.disable_adapters()
    assert np.allclose(enc.encode_queries(TEXTS), base_q, atol=1e-6)


def test_save_load_round_trip_named_adapters(tiny_model_dir, tmp_path):
    enc = BiEncoder(tiny_model_dir, device="cpu")
    enc.add_lora(LoraSettings(r=4, side="both"), name="default")
    _perturb(enc, 1)
    enc.add_lora(LoraSettings(r=2, side="query"), name="legal")
    _perturb(enc, 2)
    legal = enc.encode_queries(TEXTS)
    enc.set_adapter("default")
    default_q, default_d = enc.encode_queries(TEXTS), enc.encode_documents(TEXTS)
    enc.save(tmp_path / "m")
    # peft's own files, untouched: default at the top, named adapters in sub-folders
    assert (tmp_path / "m" / "adapter_config.json").is_file() and (tmp_path / "m" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "m" / "legal" / "adapter_config.json").is_file()
    config = json.loads((tmp_path / "m" / "retrieval_config.json").read_text())
    assert config["kind"] == "bi-encoder" and config["adapters"]["legal"]["side"] == "query"

    back = BiEncoder.load(tmp_path / "m", device="cpu")
    assert back.active_adapter == "default"
    assert np.array_equal(back.encode_queries(TEXTS), default_q)
    assert np.array_equal(back.encode_documents(TEXTS), default_d)
    back.set_adapter("legal")
    assert np.array_equal(back.encode_queries(TEXTS), legal)
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        back.set_adapter("nope")
    with pytest.raises(ValueError, match="exists already"):
        back.add_lora(LoraSettings(r=2), name="legal")


def test_plain_peft_loads_the_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    enc = BiEncoder(tiny_model_dir, device="cpu")
    enc.add_lora(LoraSettings(r=4))
    _perturb(enc)
    enc.save(tmp_path / "m")
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny_model_dir)), str(tmp_path / "m"))
    assert any("lora_B" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("side", ["both", "query"])
def test_merged_matches_and_round_trips(tiny_model_dir, tmp_path, side):
    enc = BiEncoder(tiny_model_dir, device="cpu")
    enc.add_lora(LoraSettings(r=4, side=side))
    _perturb(enc)
    q, d = enc.encode_queries(TEXTS), enc.encode_documents(TEXTS)
    merged = enc.merged()
    assert merged.is_merged and not enc.is_merged
    assert np.allclose(merged.encode_queries(TEXTS), q, atol=1e-5)
    assert np.allclose(merged.encode_documents(TEXTS), d, atol=1e-5)
    merged.save(tmp_path / "merged")
    assert not list((tmp_path / "merged").rglob("adapter_*")), "a merged model folder holds no adapter files"
    back = BiEncoder.load(tmp_path / "merged", device="cpu")
    assert np.allclose(back.encode_queries(TEXTS), q, atol=1e-5)
    assert np.allclose(back.encode_documents(TEXTS), d, atol=1e-5)


def test_adapters_ask_no_hub_and_raise_no_third_party_warnings(tiny_model_dir, tmp_path, monkeypatch):
    """A saved adapter names its base by Hub id (the packaged MiniLM's); peft's default would then ask the Hub on
    every hash and save whether the vocabulary was resized, and sentence-transformers' model card asks it for the
    base model's info on every save."""
    import socket

    real, asked = socket.getaddrinfo, []

    def lookup(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1"):
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "no network in this test")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # peft and the Hub client skip their look-ups offline
    enc = BiEncoder(tiny_model_dir, device="cpu").add_lora(LoraSettings(r=4, side="query"))  # saves a Router too
    enc.module.peft_config["default"].base_model_name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    enc.adapter_hash("default")
    state = enc.adapter_state()
    enc.save(tmp_path / "saved")
    enc.merged().save(tmp_path / "merged")
    enc.save_sentence_transformers(tmp_path / "plain")
    assert asked == [], f"a remote host was looked up: {asked}"
    assert state and all("lora_" in k for k in state), "the adapter's weights only, no base embeddings"
    back = BiEncoder(tiny_model_dir, device="cpu")
    with warnings.catch_warnings():  # nor does peft wrapping the model warn of transformers' deprecations
        warnings.simplefilter("error", FutureWarning)
        back.load_adapter(tmp_path / "saved")
        BiEncoder(tiny_model_dir, device="cpu").add_lora()
    assert np.array_equal(back.encode_queries(TEXTS), enc.encode_queries(TEXTS))
    two = BiEncoder(tiny_model_dir, device="cpu").add_lora(name="one").add_lora(name="two")
    _perturb(two)
    with warnings.catch_warnings():  # unloading the active adapter: peft's note of the one it activates instead
        warnings.simplefilter("error", UserWarning)
        two.unload_adapter("two")
    assert two.active_adapter is None  # and the base alone computes, not the adapter peft made active
    assert np.allclose(two.encode_queries(TEXTS), BiEncoder(tiny_model_dir, device="cpu").encode_queries(TEXTS),
                       atol=1e-6)


def test_bad_settings_and_foreign_adapter(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="side must be one of"):
        LoraSettings(side="documents")
    with pytest.raises(ValueError, match="rank r must be a positive integer"):
        LoraSettings(r=0)
    enc = BiEncoder(tiny_model_dir, device="cpu")
    with pytest.raises(FileNotFoundError, match="not a peft adapter folder"):
        enc.load_adapter(tmp_path)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "adapter_config.json").write_text(json.dumps({"target_modules": ["q_proj", "v_proj"]}))
    with pytest.raises(ValueError, match="trained for another base model"):
        enc.load_adapter(tmp_path / "foreign")
    with pytest.raises(ValueError, match="no active adapter to merge"):
        enc.merged()


SIDE_TEXTS = [f"{w} of {v} in the {u} study" for w, v, u in zip(
    ["measurement", "growth", "failure", "design", "theory", "analysis", "flow", "control"],
    ["proteins", "wings", "cells", "engines", "layers", "plates", "nozzles", "shells"],
    ["first", "second", "new", "old", "large", "small", "recent", "earlier"])]


def test_openvino_export_matches_torch_is_saved_and_refused_when_it_disagrees(tiny_model_dir, tmp_path):
    from retrieval.lora.host import QualityRefused

    enc = BiEncoder(tiny_model_dir, device="cpu")
    torch_q, torch_d = enc.encode_queries(TEXTS), enc.encode_documents(TEXTS)
    plain_fp = enc.fingerprint("document")
    report = enc.use_openvino("fp32", {"document": SIDE_TEXTS}, sides=("document",), cache_dir=tmp_path / "cache")
    assert report["document"]["cosine_mean"] > 0.999 and enc.inference_of("document") == "openvino-fp32"
    assert enc.inference_of("query") == "torch" and np.array_equal(enc.encode_queries(TEXTS), torch_q)
    assert np.allclose(enc.encode_documents(TEXTS), torch_d, atol=1e-4)
    assert enc.fingerprint("document") != plain_fp  # an index built by the export is not taken for torch's
    folder = enc.save(tmp_path / "enc")
    again = BiEncoder.load(folder, device="cpu")
    assert again.inference_of("document") == "openvino-fp32"
    assert np.array_equal(again.encode_documents(TEXTS), enc.encode_documents(TEXTS))
    enc.use_torch()
    assert enc.fingerprint("document") == plain_fp and np.array_equal(enc.encode_documents(TEXTS), torch_d)
    # a check no export can pass: refused, the side stays on torch, the report says why
    with pytest.raises(QualityRefused, match="document"):
        enc.use_openvino("fp32", {"document": SIDE_TEXTS}, sides=("document",), cache_dir=tmp_path / "cache",
                         min_cosine=1.01)
    assert enc.inference_of("document") == "torch" and enc.export_report["document"]["cosine_mean"] < 1.01
    # both sides compute the same (no adapter): a new precision is exported for each, never the old one reused
    both = {"query": SIDE_TEXTS, "document": SIDE_TEXTS}
    enc.use_openvino("fp32", both, cache_dir=tmp_path / "cache")
    enc.use_openvino("bf16", both, cache_dir=tmp_path / "cache", min_cosine=None)
    assert enc.inference_of("query") == enc.inference_of("document") == "openvino-bf16"
    enc.use_torch()
    with pytest.raises(ValueError, match="at least 4"):
        enc.use_openvino("int8", {"document": SIDE_TEXTS[:2]}, sides=("document",), cache_dir=tmp_path / "cache")
    # a damaged cached export is found before reuse and made again, with a warning
    from retrieval.util import CacheWarning

    (cached,) = (tmp_path / "cache" / "openvino").glob("fp32-*/model.bin")
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="exporting again"):
        enc.use_openvino("fp32", {"document": SIDE_TEXTS}, sides=("document",), cache_dir=tmp_path / "cache")
    assert np.allclose(enc.encode_documents(TEXTS), torch_d, atol=1e-4)


def test_export_batches_are_texts_of_like_token_counts(tiny_model_dir, tmp_path):
    """An export runs texts in batches of like token counts (not characters: a long word is few characters' worth of
    tokens, a list of digits many), and a text's vector is what its batch gives when encoded alone."""
    enc = BiEncoder(tiny_model_dir, device="cpu")
    enc.use_openvino("fp32", {"document": SIDE_TEXTS}, sides=("document",), cache_dir=tmp_path / "cache")
    texts = ["1 2 3 4 5 6 7 8 9 10 11", "understanding everything", "a", "x y z", "retrieval of documents " * 5,
             "4 8 15 16 23 42 7 1", "internationalisation", "protein folding"]
    counts = [len(ids) for ids in enc.st.tokenizer(texts)["input_ids"]]
    plan = enc.batch_plan(texts, "document", batch_size=3)
    assert sorted(i for b in plan for i in b) == list(range(len(texts)))
    for longer, shorter in zip(plan, plan[1:]):  # longest first, never a longer text in a later batch
        assert min(counts[i] for i in longer) >= max(counts[i] for i in shorter)
    together = enc.encode_documents(texts, batch_size=3)
    for batch in plan:
        alone = enc.encode_documents([texts[i] for i in batch], batch_size=3)
        assert np.array_equal(together[batch], alone)


def test_many_batches_run_a_batch_on_each_core_with_the_outputs_of_one_at_a_time(tiny_model_dir, tmp_path):
    """``run_batches`` runs two batches or more on a model compiled for throughput (one stream per core); each
    output is exactly what ``model(feed)`` gives; a failure in the caller's ``put`` is raised, not lost."""
    from retrieval.lora.openvino import OpenVinoModel

    enc = BiEncoder(tiny_model_dir, device="cpu")
    enc.use_openvino("int8", {"document": SIDE_TEXTS}, sides=("document",), cache_dir=tmp_path / "cache")
    texts = SIDE_TEXTS + TEXTS
    feeds = [dict(enc.st.tokenizer(texts[i:i + 3], padding=True, return_tensors="np")) for i in range(0, len(texts), 3)]
    for threads in (2, 1):
        model = OpenVinoModel(enc.export_of("document").folder, threads=threads)
        got: dict[int, np.ndarray] = {}
        model.run_batches(iter(feeds), got.__setitem__)
        assert sorted(got) == list(range(len(feeds)))
        for i, feed in enumerate(feeds):
            assert np.array_equal(got[i], model(feed))
        assert (model._throughput is not None) == (threads == 2)  # one thread: one stream, run one at a time
        # a call of a few items is split evenly over the streams, never into batches above the caller's size
        assert model.streams() == (2 if threads == 2 else 1)
        assert [model.batch_size(n, 32) for n in (1, 10, 11, 100)] == ([1, 5, 6, 32] if threads == 2 else [1, 10, 11, 32])
        model.parallel_batches = False
        assert model.streams() == 1 and model.batch_size(10, 32) == 10 and model.batch_size(10, 4) == 4
        model.parallel_batches = True
        alone: dict[int, np.ndarray] = {}
        model.run_batches([feeds[0]], alone.__setitem__)  # one batch runs as model(feed)
        assert list(alone) == [0] and np.array_equal(alone[0], got[0])

        def put(i, output):
            if i == 1:
                raise ValueError("put failed")

        with pytest.raises(ValueError, match="put failed"):
            model.run_batches(feeds, put)


def _int8_matmuls(folder) -> tuple[int, int]:
    """(MatMuls fed by a FakeQuantize or a dequantized int8 weight, all MatMuls) in a saved OpenVINO export."""
    import openvino as ov

    model = ov.Core().read_model(str(folder / "model.xml"))
    matmuls = [op for op in model.get_ops() if op.get_type_name() == "MatMul"]

    def quantized(op) -> bool:  # an input fed by a FakeQuantize, or by an int8 constant (dequantized on the way)
        for value in op.inputs():
            node = value.get_source_output().get_node()
            while node.get_type_name() in ("Multiply", "Subtract", "Convert", "Transpose", "Reshape"):
                node = node.input_value(0).get_node()
            if node.get_type_name() == "FakeQuantize" or node.get_output_element_type(0).get_type_name() in ("i8", "u8"):
                return True
        return False

    return sum(quantized(op) for op in matmuls), len(matmuls)


def test_int8_scope_auto_follows_native_bf16_and_keys_the_export(tiny_model_dir, tmp_path, monkeypatch):
    from retrieval.lora import openvino

    monkeypatch.setattr(openvino, "native_bf16", lambda: True)
    assert openvino.resolve_int8_scope("auto") == "keep-outputs"
    monkeypatch.setattr(openvino, "native_bf16", lambda: False)
    assert openvino.resolve_int8_scope("auto") == "all" and openvino.resolve_int8_scope("keep-outputs") == "keep-outputs"
    with pytest.raises(ValueError, match="int8_scope must be one of"):
        openvino.resolve_int8_scope("most")
    made = {"kind": "bi-encoder"}
    assert openvino.export_description(made, "int8", "keep-outputs") == made  # the keys exports had before
    assert openvino.export_description(made, "int8", "all") == {**made, "int8_scope": "all"}
    assert openvino.export_description(made, "fp32", "all") == made
    texts = {"document": SIDE_TEXTS}
    counts = {}
    for scope in ("keep-outputs", "all", "auto"):
        enc = BiEncoder(tiny_model_dir, device="cpu")
        report = enc.use_openvino("int8", texts, sides=("document",), cache_dir=tmp_path / "cache", int8_scope=scope,
                                  min_cosine=None)
        assert report["int8_scope"] == ("all" if scope == "auto" else scope)
        # what int8 leaves runs in fp32 where bf16 is slow (OpenVINO's default would take AVX512-BF16's bf16)
        if x86():
            assert enc._exports["document"].compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        counts[scope] = (_int8_matmuls(enc._exports["document"].folder), enc.fingerprint("document"))
    (kept_q, total), kept_fp = counts["keep-outputs"]
    (all_q, total_all), all_fp = counts["all"]
    assert total == total_all and 0 < kept_q < all_q  # the output projections quantized only with "all"
    assert kept_fp != all_fp and counts["auto"][1] == all_fp  # another export, another index; auto = all here
    assert len(list((tmp_path / "cache" / "openvino").glob("int8-*"))) == 2


def _plain_sentence_transformer_vectors(folder) -> dict:
    """``SentenceTransformer(folder)``'s encode_query / encode_document of TEXTS, in a child process that never
    imports this library (so the folder is shown to stand on its own)."""
    import subprocess
    import sys

    code = ("import json, sys\nfrom sentence_transformers import SentenceTransformer\n"
            "texts = json.loads(sys.stdin.read())\nst = SentenceTransformer(sys.argv[1], device='cpu')\n"
            "out = {'query': st.encode_query(texts).tolist(), 'document': st.encode_document(texts).tolist()}\n"
            "assert 'retrieval' not in sys.modules and 'encoders' not in sys.modules\nprint(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-c", code, str(folder)], input=json.dumps(TEXTS),
                         capture_output=True, text=True, timeout=300, cwd=folder.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("side", ["query", "both"])
def test_saved_encoder_opens_with_plain_sentence_transformer(tiny_model_dir, tmp_path, side):
    """SentenceTransformer(dir) on a saved encoder folder — in a child process that never imports this library, the
    folder moved to another directory — gives the pipeline's vectors: for a query-only adapter through a Router
    (queries adapted, documents the base model's)."""
    enc = BiEncoder(tiny_model_dir, device="cpu")
    base = enc.encode_queries(TEXTS)
    enc.add_lora(LoraSettings(r=4, side=side))
    _perturb(enc, 3)
    enc.save(tmp_path / "enc")
    moved = tmp_path / "elsewhere" / "enc"
    moved.parent.mkdir()
    (tmp_path / "enc").rename(moved)
    got = _plain_sentence_transformer_vectors(moved)
    np.testing.assert_allclose(got["query"], enc.encode_queries(TEXTS), atol=1e-5)
    np.testing.assert_allclose(got["document"], enc.encode_documents(TEXTS), atol=1e-5)
    assert not np.allclose(got["query"], base, atol=1e-3)  # the adapter is really applied
    np.testing.assert_allclose(got["document"], base if side == "query" else got["query"], atol=1e-5)
    again = BiEncoder.load(moved, device="cpu")  # our own loader is not confused by the extra files
    np.testing.assert_allclose(again.encode_queries(TEXTS), enc.encode_queries(TEXTS), atol=1e-6)
    np.testing.assert_allclose(again.encode_documents(TEXTS), enc.encode_documents(TEXTS), atol=1e-6)
    enc.save(tmp_path / "inner", sentence_transformers=False)  # what travels inside this library only
    assert not (tmp_path / "inner" / "modules.json").exists()
    assert BiEncoder.load(tmp_path / "inner", device="cpu").adapters == enc.adapters


@pytest.mark.parametrize("side", ["query", "both"])
def test_save_sentence_transformers_gives_the_pipeline_vectors_without_this_library(tiny_model_dir, tmp_path, side):
    """save_sentence_transformers: a whole sentence-transformers folder (a Router for a query-only adapter) whose
    encode_query / encode_document, in a child process that never imports this library, are this encoder's."""
    torch.manual_seed(0)  # peft draws LoRA's A from the global generator: the same adapter whatever ran before
    enc = BiEncoder(tiny_model_dir, device="cpu")
    enc.add_lora(LoraSettings(r=4, side=side))
    _perturb(enc, 4)
    enc.save_sentence_transformers(tmp_path / "st")
    got = _plain_sentence_transformer_vectors(tmp_path / "st")
    np.testing.assert_allclose(got["query"], enc.encode_queries(TEXTS), atol=1e-5)
    np.testing.assert_allclose(got["document"], enc.encode_documents(TEXTS), atol=1e-5)
    assert np.allclose(got["query"], got["document"], atol=1e-3) == (side == "both")
    with pytest.raises(FileExistsError):
        enc.save_sentence_transformers(tmp_path / "st")
