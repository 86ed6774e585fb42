import numpy as np
import pytest

from retrieval.index.faiss import FaissIndex, IndexMismatch


def _vectors(n=2000, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), [f"doc-{i}" for i in range(n)]


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,Flat", "IVF16,PQ4"])
def test_factories_find_exact_matches_and_round_trip(factory, tmp_path):
    x, ids = _vectors()
    idx = FaissIndex.build(x, ids, factory=factory, encoder_fingerprint="enc-a", nprobe=16)
    hits = idx.search(x[:20], 5)
    top1 = sum(h[0][0] == ids[i] for i, h in enumerate(hits))
    assert top1 >= (15 if "PQ" in factory else 20)
    idx.save(tmp_path / "i")
    back = FaissIndex.load(tmp_path / "i", encoder_fingerprint="enc-a")
    assert back.search(x[:20], 5) == hits
    assert (tmp_path / "i" / "docids.txt").read_text().splitlines()[:2] == ["doc-0", "doc-1"]


def test_load_refuses_other_encoder_and_damage(tmp_path):
    x, ids = _vectors(200)
    FaissIndex.build(x, ids, encoder_fingerprint="enc-a").save(tmp_path / "i")
    with pytest.raises(IndexMismatch, match="rebuild the index with this encoder"):
        FaissIndex.load(tmp_path / "i", encoder_fingerprint="enc-b")
    with open(tmp_path / "i" / "vectors.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="vectors.npy does not match its checksum"):
        FaissIndex.load(tmp_path / "i")


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_incremental_add_replace_and_delete(factory):
    x, ids = _vectors(500)
    idx = FaissIndex.build(x[:400], ids[:400], factory=factory, nprobe=8)
    idx.add(x[400:], ids[400:])
    assert len(idx) == 500 and idx.search(x[450:451], 1)[0][0][0] == "doc-450"
    assert idx.remove(["doc-450", "doc-3"]) == 2
    assert len(idx) == 498 and "doc-450" not in idx
    assert all(h[0] not in ("doc-450", "doc-3") for h in idx.search(x[450:451], 50)[0])
    assert idx.search(x[7:8], 1)[0][0][0] == "doc-7"  # ids stay right after deletion
    idx.add(-x[7:8], ["doc-7"])  # replace: the old vector goes
    assert len(idx) == 498 and idx.score(-x[7], ["doc-7"])["doc-7"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(KeyError, match="not in the index"):
        idx.remove(["missing"])


def test_hnsw_delete_is_a_clear_error_and_bad_input():
    x, ids = _vectors(100)
    idx = FaissIndex.build(x, ids, factory="HNSW8")
    with pytest.raises(NotImplementedError, match="cannot delete from an HNSW index"):
        idx.remove(["doc-1"])
    with pytest.raises(ValueError, match="cannot build factory string"):
        FaissIndex("NotAFactory", 16)
    with pytest.raises(ValueError, match="dimension 8, the index has 16"):
        idx.search(np.zeros((1, 8), np.float32), 3)
    with pytest.raises(ValueError, match="ids given to add\\(\\) must be unique"):
        idx.add(x[:2], ["a", "a"])
    with pytest.raises(ValueError, match="NaN"):
        idx.add(np.full((1, 16), np.nan, np.float32), ["z"])


def test_score_uses_stored_vectors_and_skips_unknown():
    x, ids = _vectors(50)
    idx = FaissIndex.build(x, ids)
    s = idx.score(x[0], ["doc-0", "doc-1", "unknown"])
    assert set(s) == {"doc-0", "doc-1"} and s["doc-0"] == pytest.approx(1.0, abs=1e-5)
    assert s["doc-1"] == pytest.approx(float(x[0] @ x[1]), abs=1e-5)


@pytest.mark.parametrize("factory, tolerance", [("Flat", 0.0), ("SQ8", 0.02), ("IVF16,SQ8", 0.02), ("PCAR8,Flat", 1.0),
                                                ("HNSW16,SQ8", 0.02)])
def test_an_index_without_exact_vectors_rescores_from_its_codes(factory, tolerance, tmp_path):
    """``exact_vectors=False`` keeps only the index's codes: candidates are rescored from them (decoded), so the index
    is as small as its codes; it saves and loads so, and IVF (a direct map) still deletes."""
    x, ids = _vectors()
    exact = FaissIndex.build(x, ids, factory=factory, nprobe=16)
    compact = exact.without_vectors()
    # the exact vectors are gone (an IVF index keeps a direct map instead: up to 16 bytes a document)
    assert compact.vectors.size == 0 and compact.nbytes() <= exact.nbytes() - x.nbytes + 16 * len(ids) + 64
    pool = ids[:40]
    got, expected = compact.score(x[0], pool), exact.score(x[0], pool)
    assert got.keys() == expected.keys() and max(abs(got[d] - expected[d]) for d in pool) <= tolerance
    compact.save(tmp_path / "i")
    assert not (tmp_path / "i" / "vectors.npy").exists()
    back = FaissIndex.load(tmp_path / "i")
    assert not back.exact_vectors and back.score(x[0], pool) == got and back.search(x[:3], 5) == compact.search(x[:3], 5)
    if compact.kind != "hnsw":
        back.remove(ids[:2])
        assert back.score(x[0], ids[:3]).keys() == {ids[2]}
    built = FaissIndex.build(x, ids, factory=factory, exact_vectors=False, nprobe=16)  # built so from the start
    assert built.vectors.size == 0 and built.score(x[0], pool).keys() == expected.keys()
