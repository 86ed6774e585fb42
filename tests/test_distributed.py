"""Scale-out on a real local Ray cluster (``ray.init(num_cpus=2)``, started by the tests): encoding through Ray Data
gives one process's vectors, index shards live on actors and search as one index, a sharded pipeline loads with its
shards on the cluster, and a saved pipeline searches in batches on several actors. Two-node clusters started with
``ray start``: test_distributed_cluster.py."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from encoders.bi_encoder import BiEncoder
from retrieval.distributed import RayExecutor, RayShards, check_address, encode_corpus, executor_from_args, search_batches
from retrieval.distributed.encode import UNPACKED, EncodeBatches, packed_encoder, remove_stale_unpacked
from retrieval.distributed.search import merge_rankings
from retrieval.index.faiss import FaissIndex
from retrieval.index.sharded import ShardedIndex, load_index
from retrieval.pipeline.cache import with_inference
from retrieval.pipeline.folder import load_pipeline, save_pipeline
from retrieval.pipeline.shard import shard_pipeline
from retrieval.stages.bm25_sharded import ShardedBM25
from retrieval.stages.dense import Dense, document_index


@pytest.fixture(scope="module")
def executor():
    ex = RayExecutor("local", num_cpus=2)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def small_pipeline(adi, adi_bm25s, tiny_model_dir, tmp_path_factory):
    enc = BiEncoder(str(tiny_model_dir))
    index, _, _ = document_index(enc, adi.corpus, "Flat", cache_dir=tmp_path_factory.mktemp("dense"))
    return adi_bm25s >> Dense(enc, index, mode="hybrid", k=20, neighbours=20)


@pytest.mark.parametrize("inference", ["torch", "openvino-int8"])
def test_encoding_on_the_cluster_gives_one_process_vectors(executor, adi, tiny_model_dir, inference, tmp_path):
    enc = BiEncoder(str(tiny_model_dir))
    if inference != "torch":  # the export of the tiny random model may be refused: then both sides run torch
        with_inference(enc, inference, adi.corpus, tmp_path, sides=("document",))
    expected = enc.encode_documents(list(adi.corpus.values()))
    unpacked = set(Path(tempfile.gettempdir()).glob(f"{UNPACKED}*"))
    for workers in (1, 2):
        ids, vectors = encode_corpus(enc, adi.corpus, workers, batch_size=32)
        assert ids == list(adi.corpus) and vectors.shape == expected.shape
        assert np.abs(vectors - expected).max() <= 1e-5
    assert np.array_equal(executor.encode_documents(enc, list(adi.corpus.values())), vectors)
    # each actor unpacks the encoder into a temporary folder of the node and removes it once loaded; one the pool
    # killed while loading leaves its folder, which the next unpacking (here: the sweep itself) removes
    for _ in range(60):
        remove_stale_unpacked()
        left = set(Path(tempfile.gettempdir()).glob(f"{UNPACKED}*")) - unpacked
        if not left:
            break
        time.sleep(0.5)  # an actor still loading: it removes its own
    assert not left


def test_an_unpacked_encoder_is_removed_once_loaded_and_a_dead_process_folder_by_the_next_unpacking(executor,
                                                                                                   tiny_model_dir):
    import subprocess

    import ray

    enc = BiEncoder(str(tiny_model_dir))
    before = set(Path(tempfile.gettempdir()).glob(f"{UNPACKED}{os.getpid()}-*"))
    actor = EncodeBatches([ray.put(packed_encoder(enc))])  # the actor's constructor, run in this (live) process
    assert set(Path(tempfile.gettempdir()).glob(f"{UNPACKED}{os.getpid()}-*")) == before
    assert actor.encoder.fingerprint("document") == enc.fingerprint("document")
    dead = subprocess.Popen(["true"])  # a process id that no process holds once it has exited
    dead.wait()
    stale = Path(tempfile.mkdtemp(prefix=f"{UNPACKED}{dead.pid}-"))
    mine = Path(tempfile.mkdtemp(prefix=f"{UNPACKED}{os.getpid()}-"))
    try:
        assert remove_stale_unpacked() == [stale] and not stale.exists() and mine.exists()
    finally:
        shutil.rmtree(mine)


def test_encoding_a_corpus_file_read_by_ray_data(executor, adi, datasets_root, tiny_model_dir):
    enc = BiEncoder(str(tiny_model_dir))
    ids, vectors = encode_corpus(enc, datasets_root / "adi" / "corpus.jsonl", 2, order=list(adi.corpus))
    assert ids == list(adi.corpus)
    assert np.abs(vectors - enc.encode_documents(list(adi.corpus.values()))).max() <= 1e-5  # torch: padding-free
    with pytest.raises(ValueError, match="Parquet"):
        encode_corpus(enc, datasets_root / "adi" / "queries.tsv", 1)


def test_index_shards_live_on_actors_and_search_as_one_index(executor, adi, adi_bm25s, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(len(x))]
    one = FaissIndex.build(x, ids, encoder_fingerprint="enc")
    remote = ShardedIndex.build(x, ids, "Flat", 3, encoder_fingerprint="enc", executor=executor)
    assert isinstance(remote.pool, RayShards) and len(remote.pool.nodes()) == 3
    for i in range(10):
        assert remote.search(x[i:i + 1], 25) == one.search(x[i:i + 1], 25)
    assert remote.score_batch(x[:2], [ids[:50], ids[500:]]) == [one.score(x[0], ids[:50]), one.score(x[1], ids[500:])]
    folder = remote.save(tmp_path / "index")  # each actor writes its own shard
    again = load_index(folder, placer=executor.place)
    assert isinstance(again.pool, RayShards) and again.search(x[:5], 10) == remote.search(x[:5], 10)
    again.close()
    bm25 = ShardedBM25.build(adi.corpus, tmp_path / "bm25", shards=3, k=50, executor=executor)  # passes as Ray tasks
    assert isinstance(bm25.pool, RayShards)
    expected = adi_bm25s.search(adi.queries)
    got = bm25.search(adi.queries)
    assert all(got.ranked(q) == expected.ranked(q) for q in adi.queries)
    bm25.close()


def test_a_sharded_pipeline_serves_from_actors_and_batch_search_splits_queries(executor, adi, small_pipeline, tmp_path):
    expected = small_pipeline.search(adi.queries)
    sharded = shard_pipeline(small_pipeline, adi.corpus, 2, cache_dir=tmp_path / "cache", executor=executor)
    assert sharded.search(adi.queries).scores == expected.scores
    folder = save_pipeline(sharded, tmp_path / "sharded", adi.corpus)
    loaded, _, _ = load_pipeline(folder, placer=executor.place)
    assert isinstance(loaded.stages[0].pool, RayShards) and isinstance(loaded.stages[1].index.pool, RayShards)
    query = adi.queries[next(iter(adi.queries))]
    assert loaded.search_one(query) == small_pipeline.search_one(query)
    plain = save_pipeline(small_pipeline, tmp_path / "plain", adi.corpus)
    batched = search_batches(plain, adi.queries, workers=2, batch=8, keep_stages=True, progress=False)
    qids = list(adi.queries)  # one process searching the same batches (a query's vector moves by ~1e-7 with its batch)
    here = merge_rankings([small_pipeline.search(adi.queries.subset(qids[i:i + 8])) for i in range(0, len(qids), 8)])
    assert batched.scores == here.scores and set(batched.stages) == {"bm25", "dense"}
    assert sum(t.queries for t in batched.trace if t.name == "dense") == len(adi.queries)


def test_ray_flags_are_checked_before_any_work():
    with pytest.raises(ValueError, match="not a Ray address"):
        check_address("my-cluster")
    with pytest.raises(ValueError, match="needs --ray-address"):
        executor_from_args(argparse.Namespace(ray_address=None, ray_workers=2))
    assert executor_from_args(argparse.Namespace(ray_address=None, ray_workers=None)) is None
    assert json.loads(json.dumps({"address": check_address(" auto ")})) == {"address": "auto"}


def test_the_service_serves_a_sharded_domain_from_the_cluster_and_refuses_writes(executor, adi, small_pipeline, tmp_path):
    from fastapi.testclient import TestClient

    from retrieval.service import Service, ServiceSettings, create_app

    key = "test-key-0123456789abcdef"
    save_pipeline(shard_pipeline(small_pipeline, adi.corpus, 2, cache_dir=tmp_path / "cache", executor=executor),
                  tmp_path / "root" / "sharded", adi.corpus)
    service = Service(tmp_path / "root", ServiceSettings(device="cpu"), keys=[key.encode()], placer=executor.place)
    query = adi.queries[next(iter(adi.queries))]
    with TestClient(create_app(service)) as client:
        hits = client.post("/v1/domains/sharded/search", json={"query": query, "k": 10}).json()["hits"]
        assert [(h["id"], round(h["score"], 5)) for h in hits] == [
            (d, round(s, 5)) for d, s in small_pipeline.search_one(query)[:10]]
        domain = client.get("/v1/domains").json()["domains"][0]
        assert "ray" in json.dumps(domain)  # the shards are reported as placed on the cluster
        r = client.post("/v1/domains/sharded/documents", json={"documents": [{"id": "new", "text": "x"}]},
                        headers={"X-API-Key": key})
        assert r.status_code == 409 and r.json()["error"] == "read_only"
