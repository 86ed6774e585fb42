"""Request bodies of the service (pydantic models: they make the OpenAPI document).

Unknown fields are refused (422 naming the field) rather than ignored: ``{"top_k": 50}`` or a document with
``"body"`` would otherwise silently do something else than the sender meant. A document's ``contents``
(Pyserini's field name) is accepted as the documented alias of ``text``. Every string must be valid Unicode
(a lone surrogate such as ``"\\ud800"`` cannot be stored): 422.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..types import text_problem


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _unicode(cls, value):
        for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(text, str) and (problem := text_problem(text)):
                raise ValueError(f"the string {problem}")
        return value


class SearchRequest(_Body):
    query: str = Field(description="the query text")
    k: int = Field(10, description="how many hits to return (at most the last stage's depth)")
    stages: list[str] | None = Field(None, description="run only these stages, in pipeline order, starting with "
                                                       "the first (e.g. [\"bm25\", \"dense\"]); default: all")


class DocumentIn(_Body):
    id: str = Field(description="the document's id, unique within the domain (retrieval.types.ID_RULE: no white "
                                "space or control characters, at most max_id_chars characters)")
    title: str = ""
    text: str = ""
    contents: str | None = Field(None, description="Pyserini's name for the text: accepted instead of text (not "
                                                   "both)")

    @model_validator(mode="after")
    def _contents_is_text(self):
        if self.contents is not None:
            if self.text:
                raise ValueError("give the document's text as 'text' or as 'contents', not both")
            self.text, self.contents = self.contents, None
        return self


class DocumentsRequest(_Body):
    documents: list[DocumentIn] = Field(description="documents to add; one with an id already present replaces it")


# ------------------------------------------------------------------ responses (what every endpoint answers)
class Hit(BaseModel):
    rank: int = Field(description="1 for the best")
    id: str
    score: float = Field(description="the last stage's score (higher is better; not comparable across queries)")
    title: str
    snippet: str = Field(description="the start of the text, cut at a word (snippet_chars)")


class StageTiming(BaseModel):
    name: str
    k: int | None = Field(description="the stage's depth: how many candidates it hands on")
    ms: float
    candidates_in: int
    candidates_out: int


class SearchResponse(BaseModel):
    domain: str
    query: str
    k: int
    took_ms: float
    stages: list[StageTiming] = Field(description="each stage that ran, in order, with its time")
    hits: list[Hit]


class UpsertResult(BaseModel):
    seq: int = Field(description="the write's sequence number in the domain's journal")
    added: int
    replaced: int
    documents: int = Field(description="documents in the domain after the write")


class DeleteResult(BaseModel):
    seq: int
    deleted: int
    documents: int


class CompactResult(BaseModel):
    compacted_records: int = Field(description="journal records folded into the saved folder")
    documents: int
    seconds: float


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str


class StageInfo(BaseModel):
    name: str
    type: str
    k: int | None


class JournalInfo(BaseModel):
    records: int
    last_seq: int
    replayed_at_start: int
    torn_bytes_cut: int


class DomainInfo(BaseModel):
    model_config = ConfigDict(extra="allow")  # each kind of stage may add its own facts (e.g. vector_index)

    name: str
    status: str = Field(description="ready, or what keeps it from serving (then error says why)")
    error: str | None
    documents: int
    stages: list[StageInfo]
    journal: JournalInfo
    open_seconds: float


class DomainsResponse(BaseModel):
    domains: list[DomainInfo]
    shared_models: dict[str, list[str]] = Field(description="base models in memory and the adapters loaded into each")


class Health(BaseModel):
    status: str = Field(description="ok, or degraded (503) when a domain is not ready")
    domains: dict[str, str]
    uptime_s: float
    problems: dict[str, str] | None = None


class LimitInfo(BaseModel):
    name: str
    value: int
    got: int


class ErrorBody(BaseModel):
    error: str = Field(description="a stable code, e.g. unauthorized, no_such_domain, max_k_exceeded, invalid_request")
    detail: str = Field(description="what was wrong and what to do instead")
    limit: LimitInfo | None = Field(None, description="for a *_exceeded error: the limit, and what was given")
    errors: list[dict] | None = Field(None, description="for invalid_request: every problem pydantic found")
    domain: DomainInfo | None = Field(None, description="for a reload that left the domain unavailable")
