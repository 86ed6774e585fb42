"""Core data types: documents, corpora, queries, relevance judgements and rankings.

Everything that crosses a stage boundary is a :class:`Ranking`: ``qid -> doc_id -> score`` with
string ids everywhere. TREC run files (``qid Q0 docid rank score tag``) read and write here.
"""

from __future__ import annotations

import hashlib
import math
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping


class DataFormatError(ValueError):
    """Input data that cannot be used; the message names the file, the line and the fix."""


class DataWarning(UserWarning):
    """Input data that can be used, but not all of it (e.g. judgements for unknown documents)."""


def read_text_lines(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, str]]:
    """(line number, line without its end) for every non-blank line (one with more than spaces) of a UTF-8 text
    file; a byte-order mark and CRLF line ends are accepted. A line that is not valid UTF-8 raises ``DataFormatError`` naming the file, the
    line, the byte and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(
                    f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); save the "
                    f"file as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path.name} > fixed-{path.name})") from None
            line = line.rstrip("\r\n")
            if line.strip(" "):  # a tab alone is a TSV line with empty columns, not a blank line
                yield lineno, line


MAX_ID_LENGTH = 512
ID_RULE = (f"an id is 1-{MAX_ID_LENGTH} characters with no white space and no control, format or surrogate "
           f"characters, and no empty, '.' or '..' part between slashes")
_NOT_IN_IDS = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}  # control, format, surrogate, private use, line/paragraph separators


def id_problem(value: object) -> str | None:
    """What makes ``value`` unusable as a document or query id, or None if it is fine.

    The one id rule of the library (``ID_RULE``): the loaders, ``Document``, ``Queries``, the saved corpus and
    the search service all apply it, so an id accepted anywhere loads, saves, prints in a TREC run and survives
    a URL path everywhere else.
    """
    if not isinstance(value, str):
        return f"an id must be a string, got {type(value).__name__}"
    if not value:
        return "an id must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"an id has at most {MAX_ID_LENGTH} characters, this one has {len(value)}"
    for i, c in enumerate(value):
        if c.isspace():
            return f"an id holds no white space (found {c!r} at position {i})"
        if unicodedata.category(c) in _NOT_IN_IDS:
            return f"an id holds no control, format or surrogate characters (found U+{ord(c):04X} at position {i})"
    if any(part in ("", ".", "..") for part in value.split("/")):
        return "an id (and each part of it between slashes) must not be empty, '.' or '..' (a URL path would change it)"
    return None


def text_problem(value: object) -> str | None:
    """What makes ``value`` unusable as a text field (not a string, or not valid Unicode), or None."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"holds U+{ord(value[e.start]):04X} at position {e.start}, a lone surrogate that is not valid Unicode "
                f"(UTF-8 cannot store it)")
    return None


def check_id(value: object, what: str = "document") -> str:
    problem = id_problem(value)
    if problem:
        raise DataFormatError(f"{what} id {value!r}: {problem}")
    return value  # type: ignore[return-value]


def check_text(value: object, what: str) -> str:
    problem = text_problem(value)
    if problem:
        raise DataFormatError(f"{what} {problem}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Document:
    """A document: a string id (``ID_RULE``), its text and title (valid Unicode strings)."""

    id: str
    text: str = ""
    title: str = ""

    def __post_init__(self):
        check_id(self.id)
        check_text(self.text, f"document {self.id!r}: text")
        check_text(self.title, f"document {self.id!r}: title")

    @property
    def contents(self) -> str:
        """Title and text joined as in Pyserini's BEIR "flat" condition."""
        if self.title and self.text:
            return f"{self.title} {self.text}"
        return self.title or self.text


class Corpus(Mapping[str, Document]):
    """An ordered, read-only collection of documents keyed by string id."""

    def __init__(self, documents: Iterable[Document] = ()):
        self._docs: dict[str, Document] = {}
        for doc in documents:
            if not isinstance(doc, Document):
                raise TypeError(f"Corpus takes Document objects, got {type(doc).__name__}")
            if doc.id in self._docs:
                raise DataFormatError(f"duplicate document id {doc.id!r}: document ids must be unique")
            self._docs[doc.id] = doc
        self._fingerprint: str | None = None

    def __getitem__(self, doc_id: str) -> Document:
        return self._docs[doc_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)

    def __repr__(self) -> str:
        return f"Corpus({len(self)} documents)"

    def fingerprint(self) -> str:
        """sha256 over ids, titles and texts in order: identifies the corpus an index was built from."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for doc in self._docs.values():
                for part in (doc.id, doc.title, doc.text):
                    b = part.encode("utf-8")
                    h.update(len(b).to_bytes(8, "little"))
                    h.update(b)
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class Queries(Mapping[str, str]):
    """An ordered, read-only mapping ``qid -> query text``."""

    def __init__(self, queries: Mapping[str, str] | Iterable[tuple[str, str]] = ()):
        items = queries.items() if isinstance(queries, Mapping) else queries
        self._q: dict[str, str] = {}
        for qid, text in items:
            if not isinstance(qid, str):
                raise TypeError(f"query ids must be strings, got {type(qid).__name__} {qid!r}")
            if not isinstance(text, str):
                raise TypeError(f"query {qid!r}: text must be a string, got {type(text).__name__}")
            check_id(qid, "query")
            check_text(text, f"query {qid!r}: text")
            if qid in self._q:
                raise DataFormatError(f"duplicate query id {qid!r}: query ids must be unique")
            self._q[qid] = text

    def __getitem__(self, qid: str) -> str:
        return self._q[qid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._q)

    def __len__(self) -> int:
        return len(self._q)

    def __repr__(self) -> str:
        return f"Queries({len(self)} queries)"

    def subset(self, qids: Iterable[str]) -> "Queries":
        return Queries((q, self._q[q]) for q in qids)


Qrels = dict[str, dict[str, int]]
"""Relevance judgements: ``qid -> doc_id -> grade`` (grade >= 1 is relevant)."""


@dataclass
class StageTrace:
    """What one stage did for one call: kept with the Ranking it produced."""

    name: str
    k: int | None
    seconds: float
    queries: int
    candidates_in: int
    candidates_out: int

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "k": self.k,
            "seconds": self.seconds,
            "queries": self.queries,
            "candidates_in": self.candidates_in,
            "candidates_out": self.candidates_out,
        }


@dataclass
class Ranking:
    """Scores per query: ``scores[qid][doc_id] = score`` (higher is better).

    ``trace`` records what each stage did; ``stages`` optionally keeps each stage's own ranking.
    """

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    trace: list[StageTrace] = field(default_factory=list)
    stages: dict[str, "Ranking"] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def __contains__(self, qid: object) -> bool:
        return qid in self.scores

    def __getitem__(self, qid: str) -> dict[str, float]:
        return self.scores[qid]

    def qids(self) -> list[str]:
        return list(self.scores)

    def num_candidates(self) -> int:
        return sum(len(d) for d in self.scores.values())

    def ranked(self, qid: str) -> list[tuple[str, float]]:
        """(doc_id, score) best first; ties broken by doc id so the order is deterministic."""
        return sorted(self.scores.get(qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))

    def top_k(self, k: int) -> "Ranking":
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        out: dict[str, dict[str, float]] = {}
        for qid, docs in self.scores.items():
            if len(docs) <= k:
                out[qid] = dict(docs)
            else:
                out[qid] = dict(self.ranked(qid)[:k])
        return Ranking(out, trace=list(self.trace))

    def to_trec(self, path: str | os.PathLike, tag: str = "retrieval") -> None:
        """Write a TREC run file atomically (temporary file, then rename)."""
        if not tag or any(c.isspace() for c in tag):
            raise ValueError(f"run tag must be a non-empty word without spaces, got {tag!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for qid in self.scores:
                _check_trec_id(qid, "query")
                for rank, (doc_id, score) in enumerate(self.ranked(qid), start=1):
                    _check_trec_id(doc_id, "document")
                    f.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")
        os.replace(tmp, path)

    @classmethod
    def from_trec(cls, path: str | os.PathLike) -> "Ranking":
        """Read a TREC run file (``qid Q0 docid rank score tag``)."""
        scores: dict[str, dict[str, float]] = {}
        for lineno, line in read_text_lines(path, "TREC run file"):
            parts = line.split()
            if len(parts) != 6:
                raise DataFormatError(
                    f"{path}:{lineno}: a TREC run line has 6 columns 'qid Q0 docid rank score tag', "
                    f"found {len(parts)}: {line.strip()[:80]!r}"
                )
            qid, _, doc_id, _, score, _ = parts
            try:
                value = float(score)
            except ValueError:
                raise DataFormatError(
                    f"{path}:{lineno}: score column must be a number, got {score!r}"
                ) from None
            if not math.isfinite(value):
                raise DataFormatError(f"{path}:{lineno}: score must be finite, got {score!r}")
            docs = scores.setdefault(qid, {})
            if doc_id in docs:
                raise DataFormatError(f"{path}:{lineno}: document {doc_id!r} listed twice for query {qid!r}")
            docs[doc_id] = value
        return cls(scores)


def _check_trec_id(value: str, kind: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{kind} id {value!r} cannot be written to a TREC run: ids must be non-empty and have no spaces")
