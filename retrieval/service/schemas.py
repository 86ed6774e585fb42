"""Request bodies of the service (pydantic models: they make the OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SearchRequest(BaseModel):
    query: str = Field(description="the query text")
    k: int = Field(10, description="how many hits to return (at most the last stage's depth)")
    stages: list[str] | None = Field(None, description="run only these stages, in pipeline order, starting with "
                                                       "the first (e.g. [\"bm25\", \"dense\"]); default: all")


class DocumentIn(BaseModel):
    id: str = Field(description="the document's id, unique within the domain")
    title: str = ""
    text: str = ""


class DocumentsRequest(BaseModel):
    documents: list[DocumentIn] = Field(description="documents to add; one with an id already present replaces it")
