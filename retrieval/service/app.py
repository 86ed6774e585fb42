"""The HTTP service: FastAPI over the domains under one root folder.

    python -m retrieval serve --root DOMAINS --host 127.0.0.1 --port 8080

Every sub-folder of the root that holds a saved pipeline (``pipeline.json``) is a domain. Base models are
loaded once and shared; each domain's adapters are switched per request (``retrieval.pipeline.shared``).
Searches and reads are open; writes and the admin endpoints (compact, reload) need the API key
(``$RETRIEVAL_API_KEY`` or ``--api-key-file``), compared in constant time. Work runs on a fixed pool of
threads behind a bounded queue: when the queue is full the answer is 429 at once. Every limit has its own
4xx naming it.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi_offline import FastAPIOffline

from ..pipeline.folder import is_pipeline_dir
from ..pipeline.shared import SharedModels
from ..types import ID_RULE, Document, id_problem
from ..util import recover_dir
from ..version import __version__
from .domain import NAME, Domain, DomainError
from .metrics import Metrics
from .schemas import (CompactResult, DeleteResult, DocumentOut, DocumentsRequest, DomainInfo, DomainsResponse, ErrorBody,
                      Health, SearchRequest, SearchResponse, UpsertResult)
from .settings import ServiceSettings

KEY_ENV = "RETRIEVAL_API_KEY"
LEFTOVER = re.compile(r"^([a-z0-9][a-z0-9_-]{0,63})\.(tmp|old)-[^.]+$")  # atomic_dir's folders beside a domain
PAGE = Path(__file__).with_name("page.html")


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, limit: dict | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.limit, self.headers = status, code, detail, limit, headers


def _limit(name: str, value: int, got: int, what: str, status: int = 422) -> ApiError:
    return ApiError(status, f"{name}_exceeded", f"{what} is {got}; the limit is {value} ({name})",
                    limit={"name": name, "value": value, "got": got})


def load_keys(key_file: str | os.PathLike | None = None) -> list[bytes]:
    """API keys from ``key_file`` (one per line) or ``$RETRIEVAL_API_KEY``; none means writes are disabled."""
    keys: list[str] = []
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: API key file not found")
        keys = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not keys:
            raise ValueError(f"{path}: the API key file holds no key")
    elif os.environ.get(KEY_ENV, "").strip():
        keys = [os.environ[KEY_ENV].strip()]
    short = [k for k in keys if len(k) < 16]
    if short:
        raise ValueError("an API key must be at least 16 characters long")
    return [k.encode() for k in keys]


class Gate:
    """At most ``workers`` requests run and ``max_queue`` wait; any more are refused (429) at once."""

    def __init__(self, workers: int, max_queue: int):
        self.capacity = workers + max_queue
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retrieval-worker")
        self.admitted = 0
        self._lock = threading.Lock()

    async def run(self, fn, *args):
        with self._lock:
            if self.admitted >= self.capacity:
                raise ApiError(429, "overloaded", f"the service is at capacity ({self.capacity} requests running "
                               f"or queued); retry shortly", limit={"name": "max_queue", "value": self.capacity},
                               headers={"Retry-After": "1"})
            self.admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            with self._lock:
                self.admitted -= 1


class Service:
    """The domains, shared models, keys, limits and metrics behind the HTTP app."""

    def __init__(self, root: str | os.PathLike, settings: ServiceSettings | None = None,
                 keys: list[bytes] | None = None, work_dir: str | os.PathLike | None = None, placer=None):
        """``placer`` opens the index shards of sharded domains (default: in this process; a Ray executor's
        ``place``: each shard on an actor of the cluster)."""
        self.placer = placer
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: the domains root folder does not exist")
        self.settings = settings or ServiceSettings()
        self.keys = list(keys or [])
        self.work_dir = Path(work_dir) if work_dir else self.root / ".work"
        self.models = SharedModels(device=self.settings.device)
        self.metrics = Metrics()
        self.gate = Gate(self.settings.workers, self.settings.max_queue)
        self.domains: dict[str, Domain] = {}
        self.started = time.time()
        self._reload_lock = threading.Lock()

    def open(self) -> "Service":
        leftovers = {m.group(1) for p in self.root.iterdir() if (m := LEFTOVER.match(p.name)) and p.is_dir()}
        for name in sorted(leftovers):
            done = recover_dir(self.root / name)
            if done:
                self.metrics.log(f"domain {name}: {done} (an interrupted compaction)")
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not is_pipeline_dir(folder):
                continue
            if not NAME.match(folder.name):
                self.metrics.log(f"skipping {folder}: not a valid domain name")
                continue
            domain = Domain(folder.name, folder, self.work_dir).open(self.models, self.settings.threads, self.settings.sync,
                                                                     self.placer)
            self.domains[domain.name] = domain
            self.metrics.documents.labels(domain.name).set(len(domain.docs))
            self.metrics.log(f"domain {domain.name}: {domain.status}"
                             + (f" ({len(domain.docs)} documents, {domain.replayed} journal records replayed, "
                                f"{domain.open_seconds:.1f} s)" if domain.status == "ready" else f": {domain.error}"))
        if not self.domains:
            self.metrics.log(f"no domains under {self.root}: a domain is a folder written by save_pipeline "
                             f"or `python -m retrieval train --output ROOT/NAME`")
        return self

    def close(self) -> None:
        self.gate.pool.shutdown(wait=True)
        for d in self.domains.values():
            d.close()

    def reload(self, name: str) -> Domain:
        """Open the domain's folder again (a restored or retrained folder, or a new one under the root) and
        swap it in; the old one finishes what is in flight and releases its adapters."""
        folder = self.root / name
        if not NAME.match(name) or not is_pipeline_dir(folder):
            raise ApiError(404, "no_such_domain", f"{folder} is not a saved pipeline folder under the root")
        with self._reload_lock:
            old = self.domains.get(name)
            if old is not None:
                old.close(self.models)  # its journal must be closed before the new domain replays it
            new = Domain(name, folder, self.work_dir, generation=old.generation + 1 if old else 0)
            new.open(self.models, self.settings.threads, self.settings.sync, self.placer)
            self.domains[name] = new
            self.metrics.documents.labels(name).set(len(new.docs))
            self.metrics.log(f"domain {name} reloaded: {new.status}" + (f": {new.error}" if new.error else ""))
        return new

    def maybe_compact(self, d: Domain) -> None:
        """Once the journal holds ``compact_after`` records, compact the domain on a worker thread (the write
        that crossed the line is already answered); one compaction per domain at a time."""
        limit = self.settings.compact_after
        if not limit or d.journal is None or d.journal.records < limit or d.compacting:
            return
        d.compacting = True

        def run():
            try:
                out = d.compact()
                self.metrics.log(f"domain {d.name}: compacted {out['compacted_records']} journal records "
                                 f"in {out['seconds']:.1f} s")
            except Exception as e:  # noqa: BLE001 - reported; the journal still holds every write
                self.metrics.log(f"domain {d.name}: compaction failed ({type(e).__name__}: {e}); the journal "
                                 f"keeps every write")
            finally:
                d.compacting = False

        self.gate.pool.submit(run)

    def domain(self, name: str) -> Domain:
        d = self.domains.get(name)
        if d is None:
            raise ApiError(404, "no_such_domain", f"no domain {name!r}; domains: {sorted(self.domains) or 'none'}")
        return d

    def authorize(self, headers) -> None:
        if not self.keys:
            raise ApiError(403, "writes_disabled", f"writes are disabled: the service has no API key "
                           f"(set ${KEY_ENV} or --api-key-file)")
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise ApiError(401, "unauthorized", "this endpoint needs the API key (header X-API-Key or "
                           "Authorization: Bearer KEY)", headers={"WWW-Authenticate": "Bearer"})
        ok = False
        for key in self.keys:  # every key is compared, in constant time, whichever matches
            ok |= hmac.compare_digest(given.encode(), key)
        if not ok:
            raise ApiError(401, "unauthorized", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ checks
    def check_search(self, query: str, k: int) -> None:
        s = self.settings
        if not query.strip():
            raise ApiError(422, "empty_query", "the query is empty")
        if len(query) > s.max_query_chars:
            raise _limit("max_query_chars", s.max_query_chars, len(query), "the query's length in characters")
        if k < 1:
            raise ApiError(422, "bad_k", f"k must be at least 1, got {k}")
        if k > s.max_k:
            raise _limit("max_k", s.max_k, k, "k")

    def check_documents(self, docs) -> list[Document]:
        s = self.settings
        if not docs:
            raise ApiError(422, "empty_batch", "the batch holds no documents")
        if len(docs) > s.max_batch_docs:
            raise _limit("max_batch_docs", s.max_batch_docs, len(docs), "the number of documents in the batch")
        out = []
        for i, d in enumerate(docs):
            if len(d.id) > s.max_id_chars:
                raise _limit("max_id_chars", s.max_id_chars, len(d.id), f"documents[{i}]: the id's length")
            problem = id_problem(d.id)
            if problem:
                raise ApiError(422, "bad_id", f"documents[{i}]: the id {d.id!r}: {problem} ({ID_RULE})")
            size = len(d.title) + len(d.text)
            if size > s.max_doc_chars:
                raise _limit("max_doc_chars", s.max_doc_chars, size, f"documents[{i}] ({d.id!r}): title + text length")
            if not (d.title + d.text).strip():
                raise ApiError(422, "empty_document", f"documents[{i}] ({d.id!r}) has neither title nor text")
            out.append(Document(id=d.id, title=d.title, text=d.text))
        return out


def create_app(service: Service):
    """The FastAPI app over ``service`` (opened at startup, closed at shutdown)."""
    @asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(service.gate.pool, service.open)
        yield
        service.close()

    # /docs and /redoc with their scripts and styles served by the service itself (no CDN: they work offline)
    app = FastAPIOffline(title="retrieval", version=__version__, lifespan=lifespan,
                         description="Multi-domain search: BM25 >> LoRA dense >> LoRA reranker, one pipeline per domain.")
    metrics = service.metrics
    # the API key of the writes, declared in the OpenAPI schema (either header); Service.authorize checks it
    key = [Security(APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="APIKey",
                                 description="an API key of the service (--api-key-file or $RETRIEVAL_API_KEY)")),
           Security(HTTPBearer(auto_error=False, scheme_name="Bearer",
                               description="the same API key as 'Authorization: Bearer KEY'"))]

    meaning = {401: "no API key, or a wrong one", 403: "writes are disabled (the service has no API key)",
               404: "no such domain or document", 409: "the domain cannot take this write",
               413: "the request body is over max_body_bytes", 422: "invalid request, or over a limit",
               429: "too many requests waiting (max_queue)", 500: "the write failed; the domain says why",
               503: "the domain is not ready"}

    def errors(*codes: int) -> dict:
        """The error answers an endpoint documents: each an ErrorBody."""
        return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}

    reads, writes = errors(404, 413, 422, 429, 503), errors(401, 403, 404, 409, 413, 422, 429, 500, 503)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        body = {"error": e.code, "detail": e.detail}
        if e.limit:
            body["limit"] = e.limit
        return JSONResponse(body, status_code=e.status, headers=e.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(request, e: DomainError):
        return JSONResponse({"error": e.code, "detail": e.detail}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {}
        loc = list(first.get("loc", ()))
        where = ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] else loc)) or "body"
        msg = first.get("msg", "invalid")
        if first.get("type") == "extra_forbidden":
            msg = "unknown field (this endpoint's fields are in /openapi.json; nothing was done)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        return JSONResponse({"error": "invalid_request", "detail": f"{where}: {msg}",
                             "errors": [{"loc": list(x.get("loc", ())), "msg": x.get("msg")} for x in errors]},
                            status_code=422)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0, status = time.perf_counter(), 500
        try:
            response = await _body_limit(request, call_next)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            metrics.observe(request.method, getattr(route, "path", "unmatched"), status, time.perf_counter() - t0)

    async def _body_limit(request: Request, call_next):
        """413 for a body over ``max_body_bytes``: by its Content-Length, or, chunked, once it has passed it."""
        limit = service.settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _api_error(request, _limit("max_body_bytes", limit, int(length), "the request body in bytes", 413))
        if length is None and "chunked" in request.headers.get("transfer-encoding", "").lower():
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return await _api_error(request, _limit("max_body_bytes", limit, len(body),
                                                            "the request body in bytes (at least)", 413))
            request._body = bytes(body)  # Starlette hands a body read here on to the endpoint
        return await call_next(request)

    # ------------------------------------------------------------------ endpoints
    @app.post("/v1/domains/{domain}/search", summary="Search one domain", response_model=SearchResponse,
               responses=reads)
    async def search(domain: str, body: SearchRequest):
        d = service.domain(domain)
        service.check_search(body.query, body.k)
        result = await service.gate.run(d.search, body.query, body.k, body.stages)
        n = service.settings.snippet_chars
        hits = []
        for rank, (doc_id, score) in enumerate(result.hits, start=1):
            doc = d.docs.get(doc_id)
            text = doc.text if doc else ""
            hits.append({"rank": rank, "id": doc_id, "score": score, "title": doc.title if doc else "",
                         "snippet": text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + " …"})
        stages = [{"name": t.name, "k": t.k, "ms": round(t.seconds * 1000, 3), "candidates_in": t.candidates_in,
                   "candidates_out": t.candidates_out} for t in result.trace]
        for t in result.trace:
            metrics.stage_seconds.labels(domain, t.name).observe(t.seconds)
        return {"domain": domain, "query": body.query, "k": body.k, "took_ms": round(result.seconds * 1000, 3),
                "stages": stages, "hits": hits}

    @app.post("/v1/domains/{domain}/documents", summary="Add or replace a batch of documents (API key)",
               dependencies=key, response_model=UpsertResult, responses=writes)
    async def add_documents(domain: str, body: DocumentsRequest, request: Request):
        service.authorize(request.headers)
        d = service.domain(domain)
        docs = service.check_documents(body.documents)
        out = await service.gate.run(d.upsert, docs)
        metrics.documents.labels(domain).set(len(d.docs))
        metrics.writes.labels(domain, "upsert").inc(len(docs))
        service.maybe_compact(d)
        return out

    @app.delete("/v1/domains/{domain}/documents/{doc_id:path}", summary="Delete a document (API key)",
               dependencies=key, response_model=DeleteResult, responses=writes)
    async def delete_document(domain: str, doc_id: str, request: Request):
        service.authorize(request.headers)
        d = service.domain(domain)
        out = await service.gate.run(d.delete, doc_id)
        metrics.documents.labels(domain).set(len(d.docs))
        metrics.writes.labels(domain, "delete").inc()
        service.maybe_compact(d)
        return out

    @app.post("/v1/domains/{domain}/reload", summary="Open the domain's folder again (API key)",
               dependencies=key, response_model=DomainInfo, responses=writes)
    async def reload(domain: str, request: Request):
        service.authorize(request.headers)
        d = await service.gate.run(service.reload, domain)
        if d.status != "ready":  # reported, with what is wrong: the operator restores the folder and reloads again
            return JSONResponse({"error": "domain_unavailable", "detail": f"domain {domain!r} is {d.status}: {d.error}",
                                 "domain": d.describe()}, status_code=503)
        return d.describe()

    @app.post("/v1/domains/{domain}/compact", summary="Save the live state as the domain's folder; empty the journal (API key)",
               dependencies=key, response_model=CompactResult, responses=writes)
    async def compact(domain: str, request: Request):
        service.authorize(request.headers)
        d = service.domain(domain)
        return await service.gate.run(d.compact)

    @app.get("/v1/domains/{domain}/documents/{doc_id:path}", summary="One document as stored", response_model=DocumentOut,
              responses=reads)
    async def get_document(domain: str, doc_id: str):
        doc = service.domain(domain).document(doc_id)
        return {"id": doc.id, "title": doc.title, "text": doc.text}

    @app.get("/v1/domains", summary="The domains, their stages, sizes and status", response_model=DomainsResponse)
    async def domains():
        return {"domains": [d.describe() for d in service.domains.values()],
                "shared_models": service.models.base_models}

    @app.get("/healthz", summary="200 when every domain is ready; 503 naming the ones that are not", response_model=Health,
             responses={503: {"model": Health, "description": "a domain is not ready (problems names it)"}})
    async def healthz():
        bad = {n: d.error or d.status for n, d in service.domains.items() if d.status != "ready"}
        body = {"status": "ok" if not bad else "degraded", "domains": {n: d.status for n, d in service.domains.items()},
                "uptime_s": round(time.time() - service.started, 1)}
        if bad:
            body["problems"] = bad
        return JSONResponse(body, status_code=200 if not bad else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus():
        metrics.queue.set(service.gate.admitted)
        data, content_type = metrics.render()
        return PlainTextResponse(data, media_type=content_type)

    @app.get("/", summary="A search page for trying a domain by hand", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


def serve(root, host: str = "127.0.0.1", port: int = 8080, settings: ServiceSettings | None = None,
          key_file=None, work_dir=None, log_level: str = "info", placer=None) -> None:
    import uvicorn

    service = Service(root, settings, keys=load_keys(key_file), work_dir=work_dir, placer=placer)
    if not service.keys:
        service.metrics.log(f"no API key (${KEY_ENV} or --api-key-file): writes are disabled")
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=10)
