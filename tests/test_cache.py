"""Cached artefacts (BM25 indexes, document indexes, trained adapters) are verified before reuse: a damaged or
unverifiable entry is built again with a warning, never reused or copied into a pipeline folder; a damaged
index opened directly names the problem instead of ending in a Java or FAISS traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoders import BiEncoder
from retrieval.pipeline.cache import base_index, bm25_stage, dense_adapter
from retrieval.stages.bm25 import BM25
from retrieval.util import CacheWarning, DamagedArtefact


def _flip(path: Path, at: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _largest(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _same(a, b) -> bool:
    return a.scores.keys() == b.scores.keys() and all(a.ranked(q) == b.ranked(q) for q in a.scores)


@pytest.mark.parametrize("backend", ["bm25s", "lucene"])
def test_a_damaged_cached_bm25_index_is_rebuilt(adi, tmp_path, backend):
    stage, built = bm25_stage(adi.corpus, tmp_path, k=20, backend=backend)
    assert built
    expected = stage.search(adi.queries)
    engine_files = stage.index_dir / ("lucene" if backend == "lucene" else "bm25s")
    _flip(_largest(engine_files), 100)  # one bit of the index: scores would change silently
    with pytest.warns(CacheWarning, match="does not match its checksum"):
        again, built_now = bm25_stage(adi.corpus, tmp_path, k=20, backend=backend)
    assert built_now and _same(again.search(adi.queries), expected)
    config = json.loads((again.index_dir / "bm25_config.json").read_text())
    config["k1"] = 2.0  # a setting edited in the cache: caught by the seal
    (again.index_dir / "bm25_config.json").write_text(json.dumps(config))
    with pytest.warns(CacheWarning, match="does not match its seal"):
        third, built_now = bm25_stage(adi.corpus, tmp_path, k=20, backend=backend)
    assert built_now and third.k1 == 0.9 and _same(third.search(adi.queries), expected)


def test_a_truncated_lucene_index_opened_directly_names_the_problem(adi, tmp_path):
    BM25.build(adi.corpus, tmp_path / "idx", backend="lucene")
    victim = _largest(tmp_path / "idx" / "lucene")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(DamagedArtefact, match="does not match its checksum"):
        BM25(tmp_path / "idx", verify=True)
    with pytest.raises(DamagedArtefact, match="Lucene cannot read the index .*build it again"):
        BM25(tmp_path / "idx").search(adi.queries)


def test_damaged_cached_document_index_and_adapter_are_rebuilt(adi, tiny_model_dir, tmp_path):
    enc = BiEncoder(tiny_model_dir, device="cpu")
    index, built, folder = base_index(enc, adi.corpus, "Flat", tmp_path)
    assert built
    _flip(folder / "vectors.npy")
    with pytest.warns(CacheWarning, match="vectors.npy does not match its checksum"):
        again, built, _ = base_index(enc, adi.corpus, "Flat", tmp_path)
    assert built and (again.vectors == index.vectors).all()

    first, info = dense_adapter("query", adi.corpus, adi.queries, adi.qrels, again, epochs=1, cache_dir=tmp_path,
                                model=str(tiny_model_dir))
    root = Path(info["cached_at"])
    _flip(root / "adapter_model.safetensors")
    with pytest.warns(CacheWarning, match="adapter_model.safetensors does not match its checksum"):
        second, _ = dense_adapter("query", adi.corpus, adi.queries, adi.qrels, again, epochs=1, cache_dir=tmp_path,
                                  model=str(tiny_model_dir))
    assert second.fingerprint("query") == first.fingerprint("query")  # trained again, to the same weights
    # an entry written before checksums existed cannot be checked: trained again too
    config = json.loads((root / "retrieval_config.json").read_text())
    del config["checksums"], config["seal"]
    (root / "retrieval_config.json").write_text(json.dumps(config))
    with pytest.warns(CacheWarning, match="records no checksums"):
        third, _ = dense_adapter("query", adi.corpus, adi.queries, adi.qrels, again, epochs=1, cache_dir=tmp_path,
                                 model=str(tiny_model_dir))
    assert third.fingerprint("query") == first.fingerprint("query")
    # the training record beside it decides which queries the fusion weights are chosen on: covered too
    record = json.loads((root / "train_result.json").read_text())
    record["settings"]["seed"] = 1
    (root / "train_result.json").write_text(json.dumps(record))
    with pytest.warns(CacheWarning, match="train_result.json does not match its checksum"):
        _, info = dense_adapter("query", adi.corpus, adi.queries, adi.qrels, again, epochs=1, cache_dir=tmp_path,
                                model=str(tiny_model_dir))
    assert info["settings"]["seed"] == 0
