"""Property-based tests (hypothesis), bounded in examples: the loaders and the HTTP API over random ids, texts,
fields and bodies.

- Loaders: any corpus / queries file either loads to exactly the documents it holds (and those survive being
  written and loaded again), or fails with ``DataFormatError`` naming the file and line; nothing else.
- API: no body ever gets a 5xx; a refused body gets a 4xx that says why; every document a write accepts can be
  fetched and deleted by its id, and is still there after a compaction and a reload.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from retrieval.data import load_corpus, load_queries
from retrieval.pipeline.folder import write_corpus
from retrieval.types import DataFormatError

KEY = "property-key-0123456789"
AUTH = {"X-API-Key": KEY}

# characters that break things: white space of every kind, controls, NUL, zero-width, lone surrogates, URL and
# path characters; mixed into mostly ordinary text, so that most cases are accepted and some are not
ODD = st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x1f", "\x7f", "\u200b", "\u2028", "\ufeff", "\ud800", "\udfff",
                       "/", ".", "%", "?", "#", "&", "+", "\\", '"', "é", "日", "𝄞"])
PLAIN = st.text(st.characters(), max_size=24)                       # any character but a lone surrogate
ODD_TEXT = st.text(st.one_of(st.characters(), ODD), max_size=24)
TEXT = None  # set below, once mostly() exists
GOOD_ID = st.one_of(st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=16),
                    st.from_regex(r"[a-z0-9]{1,6}(/[a-z0-9.]{1,4}){0,2}", fullmatch=True))
ID = None
JUNK = None
FIELD = st.sampled_from(["_id", "title", "text", "contents", "body", "metadata", "id"])


def mostly(good, bad, tenths: int = 9):
    """``good`` in ``tenths`` of ten draws, else ``bad`` (one_of would give each branch the same chance)."""
    return st.integers(0, 9).flatmap(lambda i: good if i < tenths else bad)


def NOTHING_OR(strategy):  # noqa: N802 - reads like a strategy name
    return mostly(st.just([]), st.lists(strategy, min_size=1, max_size=1))


TEXT = mostly(PLAIN, ODD_TEXT, 8)
ID = mostly(GOOD_ID, ODD_TEXT, 8)
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=False), TEXT,
                 st.lists(TEXT, max_size=2), st.dictionaries(TEXT, TEXT, max_size=2))


def _dump(obj) -> bytes:
    return json.dumps(obj).encode()  # ASCII: a lone surrogate becomes the escape \\ud800, as a JSON writer makes it


# --------------------------------------------------------------------------------------------- loaders
def _load_or_refusal(load, path: Path):
    """``load(path)``, or None if it refused the file with a ``DataFormatError`` naming the file (and line)."""
    try:
        loaded = load(path)
    except DataFormatError as e:
        assert re.match(rf"{re.escape(str(path))}(:\d+)?: ", str(e)), str(e)
        event("refused")
        return None
    event("loaded")
    return loaded


GOOD_DOC = st.fixed_dictionaries({"_id": mostly(ID, st.integers(0, 10**9), 8)},
                                 optional={"title": TEXT, "text": TEXT, "metadata": JUNK})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(mostly(GOOD_DOC, st.one_of(st.fixed_dictionaries({"_id": JUNK}, optional={"text": JUNK}),
                                                 st.dictionaries(FIELD, JUNK, max_size=3), JUNK)), min_size=1, max_size=5),
       raw=NOTHING_OR(st.binary(max_size=12)))
def test_corpus_files_load_exactly_or_fail_naming_file_and_line(tmp_path, lines, raw):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\n".join([_dump(x) for x in lines] + raw) + b"\n")
    corpus = _load_or_refusal(load_corpus, path)
    if corpus is None:
        return
    # what loaded is exactly what the file holds, and survives being written and read again (a compaction)
    expected = {str(x["_id"]).strip(): (x.get("title") or "", x.get("text") or "") for x in lines}
    assert {d: (doc.title, doc.text) for d, doc in corpus.items()} == expected
    again = tmp_path / "again.jsonl"
    write_corpus(corpus, again)
    assert load_corpus(again).fingerprint() == corpus.fingerprint()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(ID, TEXT), min_size=1, max_size=5), tsv=st.booleans())
def test_queries_files_load_exactly_or_fail_naming_file_and_line(tmp_path, rows, tsv):
    path = tmp_path / ("queries.tsv" if tsv else "queries.jsonl")
    if tsv:
        path.write_bytes("\n".join(f"{q}\t{t}" for q, t in rows).encode("utf-8", "surrogatepass") + b"\n")
    else:
        path.write_bytes(b"\n".join(_dump({"_id": q, "text": t}) for q, t in rows) + b"\n")
    queries = _load_or_refusal(load_queries, path)
    assert queries is None or len(queries) == len(rows)


# ------------------------------------------------------------------------------------------------- API
@pytest.fixture(scope="module")
def api(adi, tiny_model_dir, tmp_path_factory):
    """The service in-process over one domain: BM25 >> zero-shot tiny dense >> untrained tiny reranker."""
    from fastapi.testclient import TestClient

    from encoders import BiEncoder
    from rerankers import CrossEncoderReranker
    from retrieval.pipeline.folder import save_pipeline
    from retrieval.service import Service, ServiceSettings, create_app
    from retrieval.stages.bm25 import BM25
    from retrieval.stages.dense import Dense, document_index
    from retrieval.stages.rerank import Rerank

    root = tmp_path_factory.mktemp("prop-root")
    bm25 = BM25.build(adi.corpus, tmp_path_factory.mktemp("idx") / "bm25", k=30)
    enc = BiEncoder(tiny_model_dir, device="cpu")
    index, _, _ = document_index(enc, adi.corpus, "Flat", cache_dir=tmp_path_factory.mktemp("dense"))
    ce = CrossEncoderReranker(Path(tiny_model_dir).parent / "hf", device="cpu", precision="float32")
    save_pipeline(bm25 >> Dense(enc, index, k=20, neighbours=10) >> Rerank(ce, adi.corpus, k=5), root / "prop", adi.corpus)
    settings_ = ServiceSettings(device="cpu", max_batch_docs=8, max_id_chars=64, max_doc_chars=2000, compact_after=0)
    with TestClient(create_app(Service(root, settings_, keys=[KEY.encode()]))) as client:
        client.acked = {}  # id -> text of every document a write accepted and no delete removed
        yield client


def _url(doc_id: str) -> str:
    return f"/v1/domains/prop/documents/{quote(doc_id, safe='/')}"


WORDS = st.text(st.characters(categories=("L", "N")), min_size=1, max_size=12).map(lambda w: f"{w} text")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(mostly(st.fixed_dictionaries({"id": ID, "text": mostly(WORDS, TEXT, 8)}, optional={"title": TEXT}),
                            st.one_of(st.fixed_dictionaries({"id": ID, "contents": TEXT}, optional={"title": TEXT}),
                                      st.dictionaries(FIELD, JUNK, max_size=4))), max_size=3),
       extra=NOTHING_OR(st.tuples(FIELD, JUNK)).map(dict), delete=st.booleans())
def test_random_writes_never_500_and_accepted_ids_round_trip(api, docs, extra, delete):
    r = api.post("/v1/domains/prop/documents", content=_dump({"documents": docs, **extra}),
                 headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code < 500, r.text
    event(f"status {r.status_code}")
    if r.status_code != 200:
        assert r.status_code in (413, 422) and r.json()["error"] and r.json()["detail"], r.text
        return
    for d in docs:
        text = d.get("contents", d.get("text", ""))
        api.acked[d["id"]] = text
        got = api.get(_url(d["id"]))
        assert got.status_code == 200 and got.json()["id"] == d["id"] and got.json()["text"] == text, got.text
    if delete:
        victim = docs[0]["id"]
        assert api.delete(_url(victim), headers=AUTH).status_code == 200
        assert api.get(_url(victim)).status_code == 404
        api.acked.pop(victim)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=mostly(st.fixed_dictionaries({"query": TEXT}, optional={"k": st.integers(-2, 150)}),
                  st.one_of(st.fixed_dictionaries({"query": TEXT}, optional={"k": JUNK, "stages": JUNK, "top_k": JUNK}),
                            st.dictionaries(st.sampled_from(["query", "k", "stages", "q"]), JUNK, max_size=3), JUNK), 7))
def test_random_searches_never_500(api, body):
    r = api.post("/v1/domains/prop/search", content=_dump(body), headers={"Content-Type": "application/json"})
    assert r.status_code < 500, r.text
    event(f"status {r.status_code}")
    if r.status_code == 200:
        assert len(r.json()["hits"]) <= r.json()["k"]
    else:
        assert r.status_code == 422 and r.json()["detail"], r.text


def test_every_accepted_document_survives_compaction_and_reload(api):
    assert api.post("/v1/domains/prop/compact", headers=AUTH).status_code == 200
    assert api.post("/v1/domains/prop/reload", headers=AUTH).json()["status"] == "ready"
    for doc_id, text in api.acked.items():
        got = api.get(_url(doc_id))
        assert got.status_code == 200 and got.json()["text"] == text, (doc_id, got.text)
