"""The HTTP service: real servers on loopback (search, add, delete, interleaved domains, overload, crashes),
the app in-process for auth and limits, the journal and damaged folders, and the search page in Chromium.

Two domains are trained on ADI with tiny random models (for 1 and 2 epochs, so different adapters) and share
one base bi-encoder and one base cross-encoder in the service.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest.mock import ANY

import pytest

from retrieval.pipeline.folder import save_pipeline
from retrieval.service.process import ServerProcess
from retrieval.pipeline import PipelineSettings, build_pipeline

KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def root(adi, tiny_model_dir, tmp_path_factory) -> Path:
    """A domains root with two saved pipelines, ``alpha`` and ``beta`` (same base models, other adapters; alpha's
    BM25 on Lucene, which writes in place, beta's on bm25s, which is made again on a write). Their models run on
    torch, so the service shares one base model of each kind between them (OpenVINO exports fold the adapter
    in and are loaded per domain: tests/test_pipeline.py)."""
    from test_rerank import _backbone

    ce = _backbone(tmp_path_factory.mktemp("ce") / "hf", seed=0)
    out = tmp_path_factory.mktemp("domains")
    cache = tmp_path_factory.mktemp("cache")
    for name, epochs, engine in (("alpha", 1, "lucene"), ("beta", 2, "bm25s")):  # other adapters on the same bases
        settings = PipelineSettings(bm25_backend=engine, dense_model=str(tiny_model_dir), rerank_model=str(ce),
                                    rerank_precision="float32", dense_inference="torch", rerank_inference="torch",
                                    dense_epochs=epochs, rerank_epochs=epochs, rerank_depths=(5, 10), dense_k=20,
                                    neighbours=20, bm25_k=50, fit_queries=10)
        built = build_pipeline(adi.corpus, adi.queries, adi.qrels, settings, cache_dir=cache, log=lambda m: None)
        save_pipeline(built.pipeline, out / name, built.corpus, built.info)
    return out


def _copy_root(root: Path, dest: Path, names=("alpha", "beta")) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(root / name, dest / name)
    return dest


def Server(root: Path, *args: str, key: str | None = KEY) -> ServerProcess:
    return ServerProcess(root, *args, key=key)


@pytest.fixture()
def server(root, tmp_path):
    s = Server(_copy_root(root, tmp_path / "root"))
    yield s
    s.stop()


def _search(client, domain, query, k=10, stages=None):
    body = {"query": query, "k": k}
    if stages:
        body["stages"] = stages
    r = client.post(f"/v1/domains/{domain}/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------------- real server
def test_search_add_delete_search_on_a_real_server(server, adi):
    c = server.client
    listed = c.get("/v1/domains").json()["domains"]
    assert [d["name"] for d in listed] == ["alpha", "beta"] and all(d["status"] == "ready" for d in listed)
    assert listed[0]["documents"] == len(adi.corpus)

    first = _search(c, "alpha", "computer program for indexing documents", k=5)
    assert len(first["hits"]) == 5 and [s["name"] for s in first["stages"]] == ["bm25", "dense", "rerank"]
    assert all(s["ms"] >= 0 for s in first["stages"]) and first["hits"][0]["title"]
    assert all(h["id"] in adi.corpus for h in first["hits"])

    doc = {"id": "new-1", "title": "Quokka ledger", "text": "a quokka ledger about xylophone cataloguing"}
    r = c.post("/v1/domains/alpha/documents", json={"documents": [doc]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1 and r.json()["documents"] == len(adi.corpus) + 1
    bm25 = _search(c, "alpha", "quokka xylophone", stages=["bm25"])
    assert [h["id"] for h in bm25["hits"]] == ["new-1"]  # searchable once acknowledged, in BM25 ...
    full = _search(c, "alpha", "quokka xylophone", k=20)
    assert "new-1" in [h["id"] for h in full["hits"]]  # ... and through the dense and rerank stages
    assert c.get("/v1/domains/alpha/documents/new-1").json()["title"] == "Quokka ledger"
    assert "new-1" not in [h["id"] for h in _search(c, "beta", "quokka xylophone", stages=["bm25"])["hits"]]

    replaced = {**doc, "title": "Wombat ledger", "text": "a wombat ledger"}
    r = c.post("/v1/domains/alpha/documents", json={"documents": [replaced]}, headers=AUTH)
    assert r.json()["replaced"] == 1 and r.json()["documents"] == len(adi.corpus) + 1
    assert _search(c, "alpha", "quokka xylophone", stages=["bm25"])["hits"] == []
    assert [h["id"] for h in _search(c, "alpha", "wombat", stages=["bm25"])["hits"]] == ["new-1"]

    assert c.delete("/v1/domains/alpha/documents/new-1", headers=AUTH).status_code == 200
    assert _search(c, "alpha", "wombat", stages=["bm25"])["hits"] == []
    assert "new-1" not in [h["id"] for h in _search(c, "alpha", "wombat ledger", k=20)["hits"]]
    assert c.get("/v1/domains/alpha/documents/new-1").status_code == 404
    assert c.delete("/v1/domains/alpha/documents/new-1", headers=AUTH).status_code == 404

    metrics = c.get("/metrics").text
    assert 'retrieval_requests_total{method="POST",route="/v1/domains/{domain}/search",status="200"}' in metrics
    assert 'retrieval_stage_seconds_count{domain="alpha",stage="rerank"}' in metrics
    assert 'retrieval_errors_total{class="4xx",route="/v1/domains/{domain}/documents/{doc_id:path}"}' in metrics
    assert 'retrieval_documents{domain="alpha"} 82.0' in metrics
    schema = c.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/v1/domains/{domain}/search", "/v1/domains/{domain}/documents", "/v1/domains", "/healthz",
            "/metrics"} <= set(paths)
    # the API key is declared (either header) on every write, and on nothing else
    assert schema["components"]["securitySchemes"]["APIKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": ANY}
    assert schema["components"]["securitySchemes"]["Bearer"]["scheme"] == "bearer"
    secured = {(path, method) for path, ops in paths.items() for method, op in ops.items() if op.get("security")}
    assert secured == {("/v1/domains/{domain}/documents", "post"), ("/v1/domains/{domain}/documents/{doc_id}", "delete"),
                       ("/v1/domains/{domain}/reload", "post"), ("/v1/domains/{domain}/compact", "post")}
    assert paths["/v1/domains/{domain}/compact"]["post"]["security"] == [{"APIKey": []}, {"Bearer": []}]
    # every JSON endpoint documents its answer's schema, and its errors as ErrorBody
    for path, ops in paths.items():
        for method, op in ops.items():
            ok = op["responses"]["200"]["content"]
            if path in ("/metrics", "/"):
                continue
            assert ok["application/json"]["schema"].get("$ref", "").startswith("#/components/schemas/"), (path, method)
            if path.startswith("/v1/domains/"):
                assert op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert set(schema["components"]["schemas"]["SearchResponse"]["properties"]) == {
        "domain", "query", "k", "took_ms", "stages", "hits"}
    # the docs pages load their scripts from the service, not a CDN
    for page in ("/docs", "/redoc"):
        html = c.get(page).text
        assert "cdn." not in html and "/static-offline-docs/" in html, page
    assert c.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert c.get("/healthz").json()["status"] == "ok"
    assert c.post("/v1/domains/alpha/compact").status_code == 401
    r = c.post("/v1/domains/alpha/compact", headers=AUTH)
    assert r.status_code == 200 and r.json()["compacted_records"] == 3, r.text


def test_interleaved_domains_never_see_each_others_adapters(server, root, adi):
    """Concurrent requests for two domains over shared base models give each domain's own scores, the
    ones its pipeline gives when loaded alone in this process."""
    from retrieval.pipeline.folder import load_pipeline

    queries = [adi.queries[q] for q in list(adi.queries)[:8]]
    expected = {}
    for name in ("alpha", "beta"):
        pipe, _, _ = load_pipeline(root / name, device="cpu")
        expected[name] = {q: [(d, s) for d, s in pipe.search_one(q)[:10]] for q in queries}
    # the adapters really differ: the same query scores differently in the two domains
    assert any(expected["alpha"][q] != expected["beta"][q] for q in queries)

    jobs = [(name, q) for q in queries for name in ("alpha", "beta")] * 3
    random.Random(0).shuffle(jobs)

    def call(job):
        name, q = job
        return job, _search(server.client, name, q, k=10)["hits"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs))
    for (name, q), hits in results:
        want = expected[name][q]
        assert [h["id"] for h in hits] == [d for d, _ in want], (name, q)
        assert [h["score"] for h in hits] == pytest.approx([s for _, s in want], rel=1e-5, abs=1e-6), (name, q)


def test_overload_is_answered_429_not_queued(root, tmp_path):
    s = Server(_copy_root(root, tmp_path / "root", ("alpha",)), "--workers", "1", "--max-queue", "0")
    try:
        docs = [{"id": f"bulk-{i}", "text": "bulk document " * 50} for i in range(200)]

        def write(i):
            return s.client.post("/v1/domains/alpha/documents", json={"documents": docs}, headers=AUTH)

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(write, range(12)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429} and codes.count(429) >= 1 and codes.count(200) >= 1, codes
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["Retry-After"] == "1" and refused.json()["limit"]["name"] == "max_queue"
        assert write(0).status_code == 200  # once the burst is over, a write goes through
        assert 'retrieval_requests_total{method="POST",route="/v1/domains/{domain}/documents",status="429"}' \
            in s.client.get("/metrics").text
    finally:
        s.stop()


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill_20_times(root, tmp_path):
    """Kill the server at random moments during ingestion (adds, deletes, compactions), 20 times: every
    acknowledged document is there after each restart (GET and BM25 search by its own word), every
    acknowledged delete stays deleted. The ids use what the id rule allows (slashes, non-ASCII letters, URL
    characters), so they go through compactions and restarts too."""
    home = _copy_root(root, tmp_path / "root", ("alpha",))
    rng = random.Random(7)
    acked: dict[str, str] = {}  # id -> its unique word
    deleted: set[str] = set()
    kills, torn, swaps, compactions = 0, 0, 0, []
    for cycle in range(20):
        t0 = time.perf_counter()
        s = Server(home)
        started = time.perf_counter() - t0
        try:
            _check_recovered(s.client, acked, deleted)
            torn += s.client.get("/v1/domains").json()["domains"][0]["journal"]["torn_bytes_cut"] > 0
            swaps += "interrupted compaction" in s.output()
            print(f"cycle {cycle}: started in {started:.1f} s, {len(acked)} acknowledged documents checked "
                  f"in {time.perf_counter() - t0 - started:.1f} s", flush=True)
            stop = threading.Event()

            def ingest():
                n = 0
                while not stop.is_set():
                    batch = [{"id": f"c{cycle}/{n}-{j}" + ("-ü%#?" if j == 1 else ""), "title": f"crash {cycle}",
                              "text": f"word{cycle}x{n}x{j} ingestion under fire"} for j in range(3)]
                    n += 1
                    try:
                        r = s.client.post("/v1/domains/alpha/documents", json={"documents": batch}, headers=AUTH)
                    except Exception:  # noqa: BLE001 - the server was killed mid-request: not acknowledged
                        return
                    if r.status_code == 200:
                        for d in batch:
                            acked[d["id"]] = d["text"].split()[0]
                    if n % 10 == 0:  # compactions too: a kill may land in the middle of one
                        try:
                            compactions.append(s.client.post("/v1/domains/alpha/compact", headers=AUTH).status_code)
                        except Exception:  # noqa: BLE001
                            return
                    if acked and n % 4 == 0:
                        victim = rng.choice(sorted(set(acked) - deleted))
                        try:
                            r = s.client.delete(_doc_url(victim), headers=AUTH)
                        except Exception:  # noqa: BLE001 - killed mid-request: the delete may or may not be done
                            acked.pop(victim)
                            return
                        if r.status_code == 200:
                            deleted.add(victim)

            worker = threading.Thread(target=ingest)
            worker.start()
            time.sleep(rng.uniform(0.2, 1.5))
            os.kill(s.proc.pid, signal.SIGKILL)
            kills += 1
            stop.set()
            worker.join()
        finally:
            s.kill()
    s = Server(home)
    try:
        _check_recovered(s.client, acked, deleted)
        info = s.client.get("/v1/domains").json()["domains"][0]
        print(f"\ncrash test: {kills} SIGKILLs, {len(acked)} documents acknowledged, {len(deleted)} deletes "
              f"acknowledged, all recovered; {compactions.count(200)} compactions acknowledged, {swaps} restarts "
              f"cleaned up after, finished or undid an interrupted one, {torn} cut a torn journal line; journal {info['journal']}")
    finally:
        s.stop()
    assert kills == 20 and len(acked) > 20 and set(compactions) <= {200}


def _doc_url(doc_id: str, domain: str = "alpha") -> str:
    from urllib.parse import quote

    return f"/v1/domains/{domain}/documents/{quote(doc_id, safe='/')}"


def _check_recovered(client, acked: dict[str, str], deleted: set[str]) -> None:
    for doc_id, word in acked.items():
        r = client.get(_doc_url(doc_id))
        if doc_id in deleted:
            assert r.status_code == 404, f"{doc_id} was deleted (acknowledged) but is back"
            continue
        assert r.status_code == 200, f"acknowledged document {doc_id} was lost"
        hits = _search(client, "alpha", word, k=3, stages=["bm25"])["hits"]
        assert hits and hits[0]["id"] == doc_id, f"{doc_id} is stored but not searchable by {word!r}"


def test_damaged_index_is_reported_and_not_served(root, tmp_path):
    home = _copy_root(root, tmp_path / "root")
    vectors = home / "beta" / "stages" / "dense" / "index" / "vectors.npy"
    good = vectors.read_bytes()
    data = bytearray(good)
    data[-5] ^= 0xFF
    vectors.write_bytes(bytes(data))
    s = Server(home)
    try:
        health = s.client.get("/healthz")
        assert health.status_code == 503 and health.json()["domains"] == {"alpha": "ready", "beta": "damaged"}
        assert "vectors.npy" in health.json()["problems"]["beta"]
        r = s.client.post("/v1/domains/beta/search", json={"query": "indexing"})
        assert r.status_code == 503 and r.json()["error"] == "domain_unavailable" and "checksum" in r.json()["detail"]
        assert _search(s.client, "alpha", "indexing")["hits"]  # the other domain is still served
        # the operator's endpoints report the damaged domain, never a 500
        listed = s.client.get("/v1/domains")
        assert listed.status_code == 200
        assert {d["name"]: d["status"] for d in listed.json()["domains"]} == {"alpha": "ready", "beta": "damaged"}
        assert s.client.get("/").status_code == 200
        r = s.client.post("/v1/domains/beta/reload", headers=AUTH)  # still damaged: 503 saying why
        assert r.status_code == 503 and r.json()["error"] == "domain_unavailable" and "checksum" in r.json()["detail"]
        assert r.json()["domain"]["status"] == "damaged"
        vectors.write_bytes(good)  # restored from a copy: reloading the domain (API key) serves it again
        assert s.client.post("/v1/domains/beta/reload").status_code == 401
        r = s.client.post("/v1/domains/beta/reload", headers=AUTH)
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
        assert s.client.get("/healthz").status_code == 200
        assert _search(s.client, "beta", "indexing")["hits"]
    finally:
        s.stop()


# ------------------------------------------------------------------------------------- in process
@pytest.fixture(scope="module")
def app_client(root, tmp_path_factory):
    """The app in this process with small limits (FastAPI's TestClient runs its startup and shutdown)."""
    from fastapi.testclient import TestClient

    from retrieval.service import Service, ServiceSettings, create_app

    home = _copy_root(root, tmp_path_factory.mktemp("inproc"), ("alpha",))
    settings = ServiceSettings(max_query_chars=50, max_k=20, max_batch_docs=3, max_doc_chars=200, max_id_chars=10,
                               max_body_bytes=4000, device="cpu")
    with TestClient(create_app(Service(home, settings, keys=[KEY.encode()]))) as client:
        yield client


def test_writes_need_the_api_key(app_client, root, tmp_path):
    from fastapi.testclient import TestClient

    from retrieval.service import Service, create_app

    doc = {"documents": [{"id": "k1", "text": "key test"}]}
    r = app_client.post("/v1/domains/alpha/documents", json=doc)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = app_client.post("/v1/domains/alpha/documents", json=doc, headers={"X-API-Key": KEY[:-1] + "x"})
    assert r.status_code == 401 and r.json()["detail"] == "the API key is not valid"
    assert app_client.delete("/v1/domains/alpha/documents/1").status_code == 401
    assert app_client.get("/v1/domains/alpha/documents/k1").status_code == 404  # nothing was written
    r = app_client.post("/v1/domains/alpha/documents", json=doc, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    assert app_client.delete("/v1/domains/alpha/documents/k1", headers=AUTH).status_code == 200

    with TestClient(create_app(Service(_copy_root(root, tmp_path / "nokey", ("alpha",)), keys=[]))) as client:
        r = client.post("/v1/domains/alpha/documents", json=doc, headers=AUTH)
        assert r.status_code == 403 and "RETRIEVAL_API_KEY" in r.json()["detail"]


def test_journal_is_compacted_in_the_background(root, tmp_path):
    from fastapi.testclient import TestClient

    from retrieval.service import Service, ServiceSettings, create_app

    home = _copy_root(root, tmp_path / "root", ("alpha",))
    encoder = home / "alpha" / "stages" / "dense" / "encoder"
    assert (encoder / "document_0_Transformer").is_dir()  # query-only: the base weights, for plain loaders

    def inodes() -> dict:
        return {p.relative_to(encoder): p.stat().st_ino for p in encoder.rglob("*") if p.is_file()}

    before = inodes()
    service = Service(home, ServiceSettings(compact_after=3, device="cpu"), keys=[KEY.encode()])
    with TestClient(create_app(service)) as client:
        for i in range(4):
            r = client.post("/v1/domains/alpha/documents", json={"documents": [{"id": f"bg{i}", "text": "t"}]},
                            headers=AUTH)
            assert r.status_code == 200
        deadline = time.time() + 30
        while service.domains["alpha"].compacting or service.domains["alpha"].journal.records >= 3:
            assert time.time() < deadline, "no compaction after the journal reached 3 records"
            time.sleep(0.1)
        assert service.domains["alpha"].config["info"]["compacted"]["journal_records"] >= 3
        assert client.get("/v1/domains").json()["domains"][0]["documents"] == 86
    assert inodes() == before  # the unchanged encoder was carried into the new folder as hard links, not copied


def test_load_keys(tmp_path, monkeypatch):
    from retrieval.service import load_keys

    monkeypatch.delenv("RETRIEVAL_API_KEY", raising=False)
    assert load_keys() == []
    monkeypatch.setenv("RETRIEVAL_API_KEY", KEY)
    assert load_keys() == [KEY.encode()]
    f = tmp_path / "keys"
    f.write_text(f"{KEY}\n\nsecond-key-0123456789\n")
    assert load_keys(f) == [KEY.encode(), b"second-key-0123456789"]
    f.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16"):
        load_keys(f)
    with pytest.raises(FileNotFoundError):
        load_keys(tmp_path / "missing")


@pytest.mark.parametrize("path,body,status,limit", [
    ("search", {"query": "x" * 51}, 422, "max_query_chars"),
    ("search", {"query": "indexing", "k": 21}, 422, "max_k"),
    ("documents", {"documents": [{"id": f"d{i}", "text": "t"} for i in range(4)]}, 422, "max_batch_docs"),
    ("documents", {"documents": [{"id": "d1", "text": "t" * 201}]}, 422, "max_doc_chars"),
    ("documents", {"documents": [{"id": "d" * 11, "text": "t"}]}, 422, "max_id_chars"),
    ("documents", {"documents": [{"id": "d1", "text": "t" * 150}] * 3 + [{"id": "x", "text": "y" * 4000}]}, 413,
     "max_body_bytes"),
])
def test_oversized_inputs_get_a_4xx_naming_the_limit(app_client, path, body, status, limit):
    r = app_client.post(f"/v1/domains/alpha/{path}", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert r.json()["limit"]["name"] == limit and limit in r.json()["detail"]


def test_chunked_bodies_are_limited_too(app_client):
    def chunks(n):
        part = json.dumps({"query": "indexing " * n}).encode()
        for i in range(0, len(part), 100):
            yield part[i:i + 100]

    r = app_client.post("/v1/domains/alpha/search", content=chunks(1000), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["limit"]["name"] == "max_body_bytes"
    r = app_client.post("/v1/domains/alpha/search", content=chunks(3), headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["query"].startswith("indexing")


def test_bad_requests_are_named(app_client):
    def post(path, body, **kw):
        return app_client.post(f"/v1/domains/alpha/{path}", json=body, headers=AUTH, **kw)

    assert post("search", {"query": "  "}).json()["error"] == "empty_query"
    assert post("search", {"query": "a", "k": 0}).json()["error"] == "bad_k"
    assert post("search", {"k": 3}).json()["detail"] == "query: Field required"
    r = post("search", {"query": "a", "stages": ["rerank"]})
    assert r.status_code == 422 and r.json()["error"] == "bad_stages"
    assert post("search", {"query": "a", "stages": ["bm25", "nope"]}).json()["error"] == "unknown_stage"
    assert app_client.post("/v1/domains/zeta/search", json={"query": "a"}).status_code == 404
    r = post("documents", {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]})
    assert r.status_code == 422 and r.json()["error"] == "duplicate_id"
    assert post("documents", {"documents": [{"id": " a", "text": "x"}]}).json()["error"] == "bad_id"
    assert post("documents", {"documents": [{"id": "a"}]}).json()["error"] == "empty_document"
    assert post("documents", {"documents": []}).json()["error"] == "empty_batch"
    r = app_client.post("/v1/domains/alpha/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    # unknown fields are refused, naming the field, never silently ignored
    r = post("search", {"query": "a", "top_k": 50})
    assert r.status_code == 422 and r.json()["detail"].startswith("top_k: ") and "unknown field" in r.json()["detail"]
    r = post("documents", {"documents": [{"id": "c1", "title": "T", "body": "x"}]})
    assert r.status_code == 422 and r.json()["detail"].startswith("documents.0.body: ")
    r = post("documents", {"documents": [{"id": "c1", "text": "x", "contents": "y"}]})
    assert r.status_code == 422 and "not both" in r.json()["detail"]
    # strings that cannot be stored (a lone surrogate) and ids the one rule refuses
    def raw(path, body):  # json.dumps escapes a lone surrogate as \\ud800, as a client's JSON would
        return app_client.post(f"/v1/domains/alpha/{path}", content=json.dumps(body).encode(),
                               headers={**AUTH, "Content-Type": "application/json"})

    r = raw("search", {"query": "bad \ud800"})
    assert r.status_code == 422 and "lone surrogate" in r.json()["detail"], r.text
    r = raw("documents", {"documents": [{"id": "s1", "text": "x \udfff"}]})
    assert r.status_code == 422 and "lone surrogate" in r.json()["detail"], r.text
    r = raw("documents", {"documents": [{"id": "s\ud800", "text": "x"}]})
    assert r.status_code == 422, r.text
    for bad in ("has space", "a//b", "../x", "tab\tx", "nul\x00"):
        r = post("documents", {"documents": [{"id": bad, "text": "x"}]})
        assert r.status_code == 422 and r.json()["error"] == "bad_id" and "an id" in r.json()["detail"], (bad, r.text)
    assert app_client.get("/v1/domains").json()["domains"][0]["documents"] == 82  # nothing was written


def test_every_accepted_id_round_trips_through_compaction_and_a_restart(root, tmp_path):
    """What the API accepts loads after a compaction and a reload, and can be fetched and deleted: ids with
    slashes, non-ASCII letters and URL characters; Pyserini's 'contents' is taken as the text."""
    from urllib.parse import quote

    from fastapi.testclient import TestClient

    from retrieval.service import Service, ServiceSettings, create_app

    home = _copy_root(root, tmp_path / "root", ("alpha",))
    ids = ["a/b", "10.1038/nature12373", "ünï-cødé", "x:y@z#1?2%3&4+5", "c1"]
    url = lambda i: f"/v1/domains/alpha/documents/{quote(i, safe='/')}"  # noqa: E731
    with TestClient(create_app(Service(home, ServiceSettings(device="cpu"), keys=[KEY.encode()]))) as c:
        docs = [{"id": i, "title": f"round trip {n}", "text": f"word{n} survives"} for n, i in enumerate(ids[:-1])]
        docs.append({"id": "c1", "title": "T", "contents": "pyserini body"})
        r = c.post("/v1/domains/alpha/documents", json={"documents": docs}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert c.get(url("c1")).json()["text"] == "pyserini body"
        assert c.post("/v1/domains/alpha/compact", headers=AUTH).status_code == 200
        assert c.post("/v1/domains/alpha/reload", headers=AUTH).json()["status"] == "ready"
        for i in ids:
            got = c.get(url(i))
            assert got.status_code == 200 and got.json()["id"] == i, (i, got.text)
        assert c.delete(url("a/b"), headers=AUTH).status_code == 200
        assert c.get(url("a/b")).status_code == 404
    with TestClient(create_app(Service(home, ServiceSettings(device="cpu"), keys=[KEY.encode()]))) as c:
        assert {d["status"] for d in c.get("/v1/domains").json()["domains"]} == {"ready"}  # restarted
        assert c.get(url("a/b")).status_code == 404 and c.get(url(ids[2])).json()["id"] == ids[2]


def test_gate_refuses_beyond_its_queue():
    import asyncio

    from retrieval.service.app import ApiError, Gate

    gate, release = Gate(workers=1, max_queue=1), threading.Event()

    async def main():
        running = [asyncio.ensure_future(gate.run(release.wait)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as e:
            await gate.run(release.wait)
        release.set()
        await asyncio.gather(*running)
        return e.value

    refused = asyncio.run(main())
    assert refused.status == 429 and refused.limit == {"name": "max_queue", "value": 2}
    assert gate.admitted == 0
    gate.pool.shutdown()


def test_shared_models_match_separately_loaded_pipelines(root, adi):
    from retrieval.pipeline.shared import SharedModels
    from retrieval.pipeline.folder import load_pipeline

    models = SharedModels(device="cpu")
    shared = {n: load_pipeline(root / n, models=models, adapter_prefix=n)[0] for n in ("alpha", "beta")}
    bases = models.base_models  # one base model of each kind, each holding both domains' adapters
    assert sorted(k.split(":")[0] for k in bases) == ["encoder", "reranker"]
    assert all(len(adapters) == 2 for adapters in bases.values()), bases
    q = adi.queries[next(iter(adi.queries))]
    for name in ("beta", "alpha", "beta"):  # switching back and forth
        alone = load_pipeline(root / name, device="cpu")[0].search_one(q)
        got = shared[name].search_one(q)
        assert [d for d, _ in got] == [d for d, _ in alone]
        assert [s for _, s in got] == pytest.approx([s for _, s in alone], rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------- durability
def test_journal_cuts_a_torn_tail_and_refuses_damage(tmp_path):
    from retrieval.service import DamagedJournal, Journal

    j = Journal(tmp_path / "j.log")
    assert j.open() == ([], 0)
    assert [j.append({"op": "delete", "ids": [str(i)]}) for i in range(3)] == [1, 2, 3]
    j.close()
    with open(tmp_path / "j.log", "ab") as f:
        f.write(b'0badc0de {"seq":4,"op":"del')  # a crash in the middle of a write
    j = Journal(tmp_path / "j.log")
    records, cut = j.open()
    assert [r["seq"] for r in records] == [1, 2, 3] and cut == 27
    assert j.append({"op": "delete", "ids": ["x"]}) == 4
    j.close()
    lines = (tmp_path / "j.log").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"1"', b'"9"')  # damage in the middle: the checksum no longer fits
    (tmp_path / "j.log").write_bytes(b"".join(lines))
    with pytest.raises(DamagedJournal, match="line 2 of 4"):
        Journal(tmp_path / "j.log").open()
    # a whole record missing from the middle, every remaining line intact: the numbering gives it away
    (tmp_path / "j.log").write_bytes(b"".join(lines[:1] + lines[2:]))
    with pytest.raises(DamagedJournal, match="line 2 holds record 3 where record 2 belongs"):
        Journal(tmp_path / "j.log").open()


def test_domain_recovers_from_its_journal(root, tmp_path):
    from retrieval.pipeline.shared import SharedModels
    from retrieval.service import Domain
    from retrieval.types import Document

    home = _copy_root(root, tmp_path / "root", ("alpha",))
    models = SharedModels(device="cpu")
    d = Domain("alpha", home / "alpha", tmp_path / "work").open(models)
    assert d.status == "ready", d.error
    d.upsert([Document("r1", "a zeppelin for recovery"), Document("r2", "another zeppelin")])
    d.delete("r2")
    before = d.search("zeppelin recovery", k=5).hits
    d.close(models)
    # reopened over the same base models, as a reload does: a new generation loads its adapters afresh
    again = Domain("alpha", home / "alpha", tmp_path / "work", generation=1).open(models)
    assert again.status == "ready" and again.replayed == 2, again.error
    assert "r1" in again.docs and "r2" not in again.docs
    after = again.search("zeppelin recovery", k=5).hits
    assert [d for d, _ in after] == [d for d, _ in before]
    assert again.search("zeppelin recovery", k=5, stages=["bm25"]).hits[0][0] == "r1"
    assert [x for _, x in after] == pytest.approx([x for _, x in before], rel=1e-5)
    again.close()
    # a record missing from the middle of the journal (each remaining line intact): damaged, not served
    journal = home / "alpha" / "journal.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2
    journal.write_bytes(lines[1])
    third = Domain("alpha", home / "alpha", tmp_path / "work", generation=2).open(models)
    assert third.status == "damaged" and "record 2 where record 1 belongs" in third.error
    assert third.describe()["status"] == "damaged"  # reported, never a 500


def test_compaction_saves_the_live_state_and_empties_the_journal(root, tmp_path):
    from retrieval.pipeline.shared import SharedModels
    from retrieval.pipeline.folder import load_pipeline, verify
    from retrieval.service import Domain
    from retrieval.types import Document
    from retrieval.util import recover_dir

    home = _copy_root(root, tmp_path / "root", ("alpha",))
    models = SharedModels(device="cpu")
    d = Domain("alpha", home / "alpha", tmp_path / "work").open(models)
    first = next(iter(d.docs))
    d.upsert([Document("c1", "a compacted narwhal"), Document("c2", "a second narwhal")])
    d.delete(first)
    before = d.search("narwhal", k=10).hits
    out = d.compact()
    assert out["compacted_records"] == 2 and d.journal.records == 0 and not (home / "alpha" / "journal.log").stat().st_size
    assert sorted(p.name for p in home.iterdir()) == ["alpha"]  # no temporary folders left
    verify(home / "alpha")  # checksums of the new folder
    pipe, corpus, _ = load_pipeline(home / "alpha", device="cpu")  # a plain saved pipeline again
    assert len(corpus) == 83 and "c1" in corpus and first not in corpus
    assert [h for h, _ in pipe.search_one("narwhal")[:10]] == [h for h, _ in before]
    d.upsert([Document("c3", "after the compaction")])  # the new journal takes writes
    d.close(models)
    again = Domain("alpha", home / "alpha", tmp_path / "work", generation=1).open(models)
    assert again.status == "ready" and again.replayed == 1 and len(again.docs) == 84, again.error
    again.close(models)

    # a crash between the two renames of the swap: the complete new folder takes the domain's place
    (home / "alpha.old-1").mkdir()
    os.rename(home / "alpha", home / "alpha.old-1" / "x")
    shutil.copytree(home / "alpha.old-1" / "x", home / "alpha.tmp-2")
    assert recover_dir(home / "alpha").startswith("finished")
    assert (home / "alpha" / "pipeline.json").is_file() and sorted(p.name for p in home.iterdir()) == ["alpha"]
    # a crash while the new folder was written: the old folder (and its journal) stands
    (home / "alpha.tmp-3").mkdir()
    assert recover_dir(home / "alpha").startswith("removed")
    assert sorted(p.name for p in home.iterdir()) == ["alpha"] and (home / "alpha" / "journal.log").is_file()
    # the new folder gone as well: the old one comes back
    (home / "alpha.old-4").mkdir()
    os.rename(home / "alpha", home / "alpha.old-4" / "x")
    assert recover_dir(home / "alpha").startswith("undid")
    assert sorted(p.name for p in home.iterdir()) == ["alpha"] and (home / "alpha" / "journal.log").is_file()


# ------------------------------------------------------------------------------------- the page
@pytest.mark.slow
def test_search_page_in_headless_chromium(server):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        message = "Debian's chromium is not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            outside: list[str] = []  # no network but the service: anything else is recorded and refused

            def local_only(route):
                if route.request.url.startswith(server.url):
                    return route.continue_()
                outside.append(route.request.url)
                return route.abort()

            page.route("**/*", local_only)
            page.goto(server.url + "/docs")  # Swagger UI renders the service's own schema
            page.wait_for_selector(".swagger-ui .information-container .title")
            assert "retrieval" in page.inner_text(".swagger-ui .information-container .title")
            page.wait_for_selector(".opblock-summary-path[data-path='/v1/domains/{domain}/search']")
            page.goto(server.url + "/")
            page.wait_for_selector("#domain option[value=beta]", state="attached")
            page.select_option("#domain", "beta")
            assert page.locator("#stages input").count() == 3
            page.fill("#query", "computer program for indexing documents")
            page.fill("#k", "5")
            page.click("#go")
            page.wait_for_selector("#results li")
            ids = page.locator("#results li").evaluate_all("els => els.map(e => e.dataset.id)")
            api = _search(server.client, "beta", "computer program for indexing documents", k=5)
            assert ids == [h["id"] for h in api["hits"]]
            rows = page.locator("#timings tbody tr").all_inner_texts()
            assert [r.split("\t")[0] for r in rows] == ["bm25", "dense", "rerank"]
            page.locator("#stages input[value=rerank]").uncheck()
            page.click("#go")
            page.wait_for_function("document.querySelectorAll('#timings tbody tr').length === 2")
            page.fill("#query", "x" * 3000)
            page.click("#go")
            page.wait_for_selector("#status.error")
            assert "max_query_chars" in page.inner_text("#status")
            assert outside == []
        finally:
            browser.close()
