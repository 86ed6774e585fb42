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
