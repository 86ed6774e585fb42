"""Sharded indexes in one process: FAISS shards from one trained template and BM25 shards scoring with the
collection's statistics rank as one index; a pipeline cut into shards ranks as before, saves, loads, and refuses
writes. (The same shards on Ray actors: test_distributed.py.)"""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from retrieval.index.faiss import FaissIndex, IndexMismatch
from retrieval.index.sharded import ShardedIndex, load_index
from retrieval.shards import LocalShards, contiguous, merge_top_k
from retrieval.stages.bm25 import BM25
from retrieval.stages.bm25_sharded import ShardedBM25
from retrieval.util import DamagedArtefact


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[:40] + 0.2 * rng.standard_normal((40, 24)).astype(np.float32)
    return x, [f"doc/{i}" for i in range(len(x))], queries


def _ids(hits):
    return [[d for d, _ in h] for h in hits]


def test_contiguous_cuts_and_merge_keeps_the_earlier_shard_on_ties():
    assert [len(r) for r in contiguous(10, 3)] == [3, 3, 4] and contiguous(5, 5)[-1] == range(4, 5)
    with pytest.raises(ValueError, match="at most 3"):
        contiguous(3, 4)
    with pytest.raises(ValueError, match="positive integer"):
        contiguous(3, 0)
    assert merge_top_k([[("b", 2.0), ("z", 1.0)], [("a", 2.0), ("c", 1.5)]], 3) == [("b", 2.0), ("a", 2.0), ("c", 1.5)]


@pytest.mark.parametrize("shards", [1, 2, 5])
def test_flat_shards_rank_and_score_exactly_as_one_index(vectors, shards):
    x, ids, q = vectors
    one = FaissIndex.build(x, ids, encoder_fingerprint="enc")
    sharded = ShardedIndex.build(x, ids, "Flat", shards, encoder_fingerprint="enc")
    assert len(sharded) == len(one) and sharded.shards == shards and sorted(sharded.ids) == sorted(ids)
    for i in range(len(q)):  # one query at a time, as a service searches: the same ids, order and scores
        assert sharded.search(q[i:i + 1], 50) == one.search(q[i:i + 1], 50)
    pools = [ids[i * 7:i * 7 + 60] + ["not-there"] for i in range(len(q))]
    assert sharded.score_batch(q, pools) == [one.score(v, p) for v, p in zip(q, pools)]


def test_ivf_shards_share_one_trained_quantizer_and_hnsw_shards_keep_recall(vectors):
    x, ids, q = vectors
    ivf = ShardedIndex.build(x, ids, "IVF32,Flat", 3, nprobe=32)  # every list probed: exact
    centroids = [faiss.extract_index_ivf(s.index).quantizer.reconstruct_n(0, 32) for s in ivf.pool.shards]
    assert all(np.array_equal(c, centroids[0]) for c in centroids[1:])
    exact = FaissIndex.build(x, ids)
    assert _ids(ivf.search(q, 20)) == _ids(exact.search(q, 20))
    hnsw = ShardedIndex.build(x, ids, "HNSW16", 3)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(_ids(hnsw.search(q, 20)), _ids(exact.search(q, 20)))])
    assert recall > 0.9


def test_a_sharded_index_folder_names_its_shards_and_refuses_damage(vectors, tmp_path):
    x, ids, q = vectors
    sharded = ShardedIndex.build(x, ids, "Flat", 3, encoder_fingerprint="enc")
    folder = sharded.save(tmp_path / "index")
    config = json.loads((folder / "index_config.json").read_text())
    assert config["kind"] == "sharded-faiss" and [s["path"] for s in config["shards"]] == [
        "shard-000", "shard-001", "shard-002"] and sum(s["count"] for s in config["shards"]) == len(ids)
    again = load_index(folder, encoder_fingerprint="enc")
    assert isinstance(again, ShardedIndex) and again.search(q, 10) == sharded.search(q, 10)
    assert isinstance(load_index(FaissIndex.build(x, ids).save(tmp_path / "one")), FaissIndex)
    with pytest.raises(IndexMismatch, match="rebuild the index with this encoder"):
        load_index(folder, encoder_fingerprint="other")
    with pytest.raises(NotImplementedError, match="read-only"):
        again.add(x[:1], ["new"])
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    with open(damaged / "shard-001" / "docids.txt", "a") as f:
        f.write("extra\n")
    with pytest.raises(DamagedArtefact):
        load_index(damaged)
    shutil.rmtree(damaged / "shard-002")
    with pytest.raises(DamagedArtefact, match="shard-002 is missing"):
        load_index(damaged)


def test_bm25_shards_score_with_the_collections_statistics(adi, adi_bm25s, tmp_path):
    sharded = ShardedBM25.build(adi.corpus, tmp_path / "bm25", shards=3, k=50)
    assert sharded.shards == 3 and sum(sharded.counts) == len(adi.corpus)
    expected, got = adi_bm25s.search(adi.queries), sharded.search(adi.queries)
    for q in adi.queries:  # the same documents with the very same scores
        assert got.ranked(q) == expected.ranked(q)
    # a shard alone scores with the whole collection's statistics, not its own 27 documents'
    alone = BM25(tmp_path / "bm25" / "shard-001", k=50).search(adi.queries)
    local = BM25.build(adi.corpus.__class__(adi.corpus[d] for d in list(adi.corpus)[27:54]), tmp_path / "own", "bm25s")
    q = next(q for q in adi.queries if alone[q])
    assert all(abs(s - expected[q][d]) < 1e-6 for d, s in alone[q].items() if d in expected[q])
    assert any(abs(s - local.search(adi.queries)[q].get(d, s)) > 1e-3 for d, s in alone[q].items())
    with pytest.raises(ValueError, match="read-only"):
        sharded.update(delete=["1"])
    with pytest.raises(ValueError, match="read-only"):
        BM25(tmp_path / "bm25" / "shard-000").update(delete=[next(iter(adi.corpus))])
    again = ShardedBM25(tmp_path / "bm25", k=50, verify=True)
    assert again.search(adi.queries).scores == got.scores
    (tmp_path / "bm25" / "shard-002" / "bm25_config.json").write_text("{}")
    with pytest.raises(DamagedArtefact, match="shard-002"):
        ShardedBM25(tmp_path / "bm25")


def test_a_pipeline_cut_into_shards_ranks_as_before_and_refuses_writes(adi, adi_bm25s, tiny_model_dir, tmp_path):
    from encoders.bi_encoder import BiEncoder
    from retrieval.pipeline import PipelineSettings
    from retrieval.pipeline.folder import load_pipeline, save_pipeline
    from retrieval.pipeline.registry import WriteRefused, kind_of
    from retrieval.pipeline.shard import shard_pipeline
    from retrieval.stages.dense import Dense, document_index

    enc = BiEncoder(str(tiny_model_dir))
    index, _, _ = document_index(enc, adi.corpus, "Flat", cache_dir=tmp_path / "dense")
    pipe = adi_bm25s >> Dense(enc, index, mode="hybrid", k=20, neighbours=20)
    sharded = shard_pipeline(pipe, adi.corpus, 3, cache_dir=tmp_path / "cache")
    bm25, dense = sharded.stages
    assert isinstance(bm25, ShardedBM25) and isinstance(dense.index, ShardedIndex) and isinstance(dense.index.pool,
                                                                                                   LocalShards)
    expected = pipe.search(adi.queries)
    assert sharded.search(adi.queries).scores == expected.scores
    folder = save_pipeline(sharded, tmp_path / "pipe", adi.corpus)
    stages = json.loads((folder / "pipeline.json").read_text())["stages"]
    assert [(s["type"], s.get("shards")) for s in stages] == [("bm25-sharded", 3), ("dense", 3)]
    loaded, _, _ = load_pipeline(folder)
    assert loaded.search(adi.queries).scores == expected.scores
    with pytest.raises(WriteRefused, match="read-only"):
        kind_of(loaded.stages[1]).check_write(loaded.stages[1], [], [])
    assert not kind_of(loaded.stages[0]).writable  # the service refuses writes to the domain (409)
    with pytest.raises(ValueError, match="bm25s"):
        PipelineSettings(shards=2, bm25_backend="lucene")


def test_a_pipeline_can_rescore_from_the_index_codes(adi, adi_bm25s, tiny_model_dir, tmp_path):
    """``PipelineSettings(dense_exact_vectors=False)`` (``--no-dense-exact-vectors``): the dense index keeps no exact
    vectors; with Flat the codes are the vectors, so the rankings stay; the folder holds no vectors.npy."""
    from encoders.bi_encoder import BiEncoder
    from retrieval.pipeline.folder import load_pipeline, save_pipeline
    from retrieval.pipeline.shard import shard_pipeline
    from retrieval.stages.dense import Dense, document_index

    enc = BiEncoder(str(tiny_model_dir))
    index, _, _ = document_index(enc, adi.corpus, "Flat", cache_dir=tmp_path / "dense")
    pipe = adi_bm25s >> Dense(enc, index, mode="hybrid", k=20, neighbours=20)
    for shards in (1, 2):
        compact = shard_pipeline(pipe, adi.corpus, shards, cache_dir=tmp_path / "cache", exact_vectors=False)
        assert compact.stages[1].index.nbytes() < index.nbytes() / 1.9  # the vectors were half of it
        folder = save_pipeline(compact, tmp_path / f"pipe-{shards}", adi.corpus)
        assert not list(folder.rglob("vectors.npy"))
        loaded, _, _ = load_pipeline(folder)
        expected = pipe.search(adi.queries)
        assert all(loaded.search(adi.queries).ranked(q) == expected.ranked(q) for q in adi.queries)
