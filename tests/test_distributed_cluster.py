"""A real two-node Ray cluster on this machine: a head node and a second node process started with ``ray start``
(loopback addresses only), so shard actors and pipeline copies really sit in other processes on other nodes; the
commands a user runs (``python -m retrieval train / search --ray-address``) in child processes. Slow: each node
takes seconds to start, and the tests train tiny models."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.types import Ranking

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
HEAD, NODE = "127.0.0.2", "127.0.0.3"  # loopback: Ray would turn 127.0.0.1 into the machine's network address


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """(address, environment) of a head node and a second node, one CPU each, stopped afterwards."""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # the token `ray start` keeps in ~/.ray, for nodes and drivers
    address = f"{HEAD}:{_free_port(HEAD)}"
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--node-ip-address={HEAD}", f"--port={address.split(':')[1]}",
                        "--include-dashboard=false", *common], env=env, check=True, timeout=180, capture_output=True)
        subprocess.run([RAY, "start", f"--address={address}", f"--node-ip-address={NODE}", *common], env=env,
                       check=True, timeout=180, capture_output=True)
        # `ray start` returns before every driver sees the second node alive; shards placed before then all sit
        # on the head (seen once), so wait until a driver sees both
        _run(["-c", "import sys, time; from retrieval.distributed import RayExecutor; ex = RayExecutor(sys.argv[1]); "
                    "t = time.time()\nwhile len(ex.nodes()) < 2 and time.time() - t < 60: time.sleep(0.5)\n"
                    "assert len(ex.nodes()) == 2, ex.nodes()", address], env, timeout=120)
        yield address, env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, timeout=180, capture_output=True)


def _run(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def folders(adi, adi_bm25s, tiny_model_dir, tmp_path_factory):
    """A small pipeline (BM25 >> hybrid dense, tiny encoder) saved as it is and cut into 2 shards."""
    from encoders.bi_encoder import BiEncoder
    from retrieval.pipeline.folder import save_pipeline
    from retrieval.pipeline.shard import shard_pipeline
    from retrieval.stages.dense import Dense, document_index

    root = tmp_path_factory.mktemp("folders")
    enc = BiEncoder(str(tiny_model_dir))
    index, _, _ = document_index(enc, adi.corpus, "Flat", cache_dir=root / "dense")
    pipe = adi_bm25s >> Dense(enc, index, mode="hybrid", k=20, neighbours=20)
    plain = save_pipeline(pipe, root / "plain", adi.corpus)
    sharded = save_pipeline(shard_pipeline(pipe, adi.corpus, 2, cache_dir=root / "cache"), root / "sharded", adi.corpus)
    return plain, sharded


@pytest.mark.slow
def test_shards_on_two_nodes_and_pipeline_copies_search_as_one_process(cluster, folders, datasets_root, tmp_path):
    address, env = cluster
    plain, sharded = folders
    topics = str(datasets_root / "adi" / "queries.jsonl")
    code = ("import json, sys; from retrieval.distributed import RayExecutor; from retrieval.pipeline.folder import "
            "load_pipeline; ex = RayExecutor(sys.argv[1]); p, _, _ = load_pipeline(sys.argv[2], placer=ex.place); "
            "print(json.dumps({'nodes': len([n for n in ex.nodes()]), 'shard_nodes': sorted({n for n in "
            "p.stages[0].pool.nodes() + p.stages[1].index.pool.nodes()})}))")
    placed = json.loads(_run(["-c", code, address, str(sharded)], env).stdout.strip().splitlines()[-1])
    assert placed["nodes"] == 2 and len(placed["shard_nodes"]) == 2, placed  # the shards sit on both nodes
    runs = {}
    for name, folder, ray in (("here", plain, []), ("shards", sharded, ["--ray-address", address]),
                              ("copies", plain, ["--ray-address", address, "--ray-workers", "2"])):
        runs[name] = tmp_path / f"{name}.trec"
        _run(["-m", "retrieval", "search", "--pipeline", str(folder), "--topics", topics, "--output", str(runs[name]),
              "--k", "20", "--batch", "8", *ray], env)
    expected = Ranking.from_trec(runs["here"])
    for name in ("shards", "copies"):
        _same_rankings(Ranking.from_trec(runs[name]), expected, name)


@pytest.mark.slow
def test_a_shard_placed_on_the_wrong_node_is_moved_to_its_own(cluster):
    """Ray's soft node affinity put every shard on one node once in a few dozen runs: here the soft placement is
    made to miss on purpose (each shard asked onto the other node), and the pool must move every shard to its own."""
    address, env = cluster
    code = ("import json, sys\nfrom retrieval.distributed import RayExecutor, RayShards\n"
            "from retrieval.distributed.cluster import live_nodes\n"
            "class Missing(RayShards):\n    def _start(self, opener, node, soft):\n"
            "        ids = [n['NodeID'] for n in live_nodes()]\n"
            "        return super()._start(opener, ids[1 - ids.index(node)] if soft else node, soft)\n"
            "ex = RayExecutor(sys.argv[1]); ids = [n['NodeID'] for n in live_nodes()]\n"
            "pool = Missing([dict, dict, dict])\n"
            "print(json.dumps({'nodes': ids, 'placed': pool.nodes(), 'answers': pool.broadcast('__len__')}))")
    got = json.loads(_run(["-c", code, address], env).stdout.strip().splitlines()[-1])
    assert len(got["nodes"]) == 2 and got["answers"] == [0, 0, 0], got
    assert got["placed"] == [got["nodes"][i % 2] for i in range(3)], got  # shard i on the i-th node, round robin


def _same_rankings(got: Ranking, expected: Ranking, name: str, tol: float = 1e-6) -> None:
    """The same documents in the same order with the same scores, up to float noise of ``tol`` (another process
    may run torch's kernels on other threads): documents may swap only where their scores tie within ``tol``."""
    assert got.scores.keys() == expected.scores.keys(), name
    for q in expected.scores:
        a, b = expected.ranked(q), got.ranked(q)
        where = f"{name}, query {q}: expected {a[:5]}..., got {b[:5]}..."
        assert len(a) == len(b), where
        assert all(abs(x - y) <= tol for (_, x), (_, y) in zip(a, b)), where
        moved = {d for (d, _), (e, _) in zip(a, b) if d != e} | {e for (d, _), (e, _) in zip(a, b) if d != e}
        scores_a, scores_b = dict(a), dict(b)
        for d in moved:
            if d in scores_a and d in scores_b:
                assert abs(scores_a[d] - scores_b[d]) <= tol, where
            else:  # in one top k only: it crossed the cut, which only a tie at the cut allows
                assert abs(scores_a.get(d, scores_b.get(d)) - a[-1][1]) <= tol, where


@pytest.mark.slow
def test_train_on_a_local_cluster_saves_a_sharded_pipeline(datasets_root, tiny_model_dir, tmp_path):
    """``python -m retrieval train --shards 2 --ray-address local``: the corpus encoded through Ray Data, the shards
    built and held on the cluster; the saved folder ranks as the same pipeline trained without Ray or shards."""
    env = {**os.environ, "RETRIEVAL_CACHE": str(tmp_path / "cache")}
    common = ["-m", "retrieval", "train", "--dataset", str(datasets_root / "adi"), "--split", "test", "--corpus-only",
              "--dense-model", str(tiny_model_dir), "--dense-epochs", "1", "--bm25-k", "50", "--dense-k", "20",
              "--neighbours", "20", "--rerank-depths", "5", "10"]
    _run([*common, "--output", str(tmp_path / "one")], env)
    _run([*common, "--shards", "2", "--ray-address", "local", "--output", str(tmp_path / "sharded")],
         {**env, "RETRIEVAL_CACHE": str(tmp_path / "cache-ray")})  # nothing reused: encoded on the cluster
    config = json.loads((tmp_path / "sharded" / "pipeline.json").read_text())
    assert [(s["type"], s.get("shards")) for s in config["stages"]] == [("bm25-sharded", 2), ("dense", 2)]
    topics = str(datasets_root / "adi" / "queries.jsonl")
    for name in ("one", "sharded"):
        _run(["-m", "retrieval", "search", "--pipeline", str(tmp_path / name), "--topics", topics, "--output",
              str(tmp_path / f"{name}.trec"), "--k", "20"], env)
    one, sharded = Ranking.from_trec(tmp_path / "one.trec"), Ranking.from_trec(tmp_path / "sharded.trec")
    assert all([d for d, _ in one.ranked(q)] == [d for d, _ in sharded.ranked(q)] for q in one.scores)


@pytest.mark.slow
def test_the_benchmark_runner_on_a_local_cluster_reports_one_process_figures(datasets_root, tiny_model_dir, folders,
                                                                              tmp_path):
    """``python -m benchmarks run --ray-address local``: the corpus encoded on the cluster, the batch pass split
    among copies of each condition's pipeline, a saved sharded pipeline searched with its shards on the cluster;
    the figures are the in-process run's, and the sharded folder's are the unsharded one's."""
    plain, sharded = folders
    figures = {}
    for name, ray in (("here", []), ("ray", ["--ray-address", "local", "--ray-workers", "2"])):
        _run(["-m", "benchmarks", "run", "--dataset", str(datasets_root / "adi"), "--split", "test", "--pipeline", "bm25",
              "--pipeline", "dense", "--pipeline", str(plain), "--pipeline", str(sharded), "--dense-model",
              str(tiny_model_dir), "--latency-queries", "2", "--output", str(tmp_path / name), *ray],
             {**os.environ, "RETRIEVAL_CACHE": str(tmp_path / f"cache-{name}")})
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        figures[name] = {r["pipeline"]: round(r["metrics"]["nDCG@10"], 4) for r in summary}
    assert figures["ray"] == figures["here"] and set(figures["here"]) == {"bm25", "dense", "plain", "sharded"}
    assert figures["here"]["sharded"] == figures["here"]["plain"]


@pytest.mark.slow
def test_a_jvm_in_the_process_survives_starting_and_ending_a_cluster(cluster, datasets_root, tmp_path):
    """Lucene (a JVM through Pyserini) searching, then a local Ray cluster started in the same process — while the
    ``ray start`` cluster of this module runs on the machine: 'local' still starts a new one —, Lucene again, the
    cluster ended, Lucene again. ``ray.init`` and ``ray.shutdown`` alone put fault handlers over the JVM's, and the
    JVM's next deliberate SIGSEGV (implicit null checks) killed the process within the first SciFact search."""
    code = ("import sys\nfrom retrieval.data import load_dataset\nfrom retrieval.stages.bm25 import BM25\n"
            "from retrieval.distributed import RayExecutor\n"
            "ds = load_dataset(sys.argv[1], 'dev')\nbm25 = BM25.build(ds.corpus, sys.argv[2], backend='lucene')\n"
            "before = bm25.search(ds.queries).scores\nex = RayExecutor('local', num_cpus=1)\n"
            "assert len(ex.nodes()) == 1\n"
            "for _ in range(2):\n    assert bm25.search(ds.queries).scores == before\nex.close()\n"
            "for _ in range(2):\n    assert bm25.search(ds.queries).scores == before\nprint('survived')\n")
    out = _run(["-c", code, str(datasets_root / "scifact"), str(tmp_path / "lucene")], dict(os.environ))
    assert out.stdout.strip().splitlines()[-1] == "survived"
