"""Loaders for BEIR folders and the MS MARCO layout, into the core types (Corpus, Queries, Qrels).

BEIR:      corpus.jsonl ({"_id", "title", "text"}), queries.jsonl ({"_id", "text"}),
           qrels/<split>.tsv (query-id, corpus-id, score; header row optional)
MS MARCO:  collection.tsv (pid, passage), queries.<split>.tsv (qid, text),
           qrels.<split>.tsv (TREC style: qid 0 pid grade; tab- or space-separated)

Every loader accepts CRLF line endings and a UTF-8 byte-order mark. Bad input raises
:class:`DataFormatError` naming the file, the line and the fix; judgements that point at unknown
queries or documents are dropped with a :class:`DataWarning` that says how many.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .types import (ID_RULE, Corpus, DataFormatError, DataWarning, Document, Qrels, Queries, id_problem, read_text_lines,
                    text_problem)

__all__ = [
    "Dataset",
    "load_dataset",
    "load_irds",
    "is_irds",
    "dataset_name",
    "load_beir",
    "load_msmarco",
    "load_corpus",
    "load_queries",
    "load_qrels",
    "available_splits",
]


@dataclass
class Dataset:
    """A corpus, the queries judged in one split, and that split's judgements."""

    name: str
    path: Path
    split: str
    corpus: Corpus
    queries: Queries
    qrels: Qrels

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, split={self.split!r}, docs={len(self.corpus)}, "
            f"queries={len(self.queries)}, judgements={sum(len(v) for v in self.qrels.values())})"
        )


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, line in read_text_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(
                f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); each line must be one "
                f'JSON object such as {{"_id": "d1", "title": "...", "text": "..."}}'
            ) from None
        if not isinstance(obj, dict):
            raise DataFormatError(
                f"{path}:{lineno}: expected a JSON object per line, found {type(obj).__name__}"
            )
        yield lineno, obj


def _check_id(value: str, path: Path, lineno: int, column: str = "id") -> str:
    """The one id rule (``retrieval.types.ID_RULE``), with the file and line; white space around it is dropped."""
    value = value.strip()
    problem = id_problem(value)
    if problem:
        raise DataFormatError(f"{path}:{lineno}: {column} {value!r}: {problem} ({ID_RULE})")
    return value


def _id_of(obj: dict, path: Path, lineno: int) -> str:
    if "_id" not in obj:
        keys = ", ".join(sorted(obj)) or "none"
        raise DataFormatError(
            f"{path}:{lineno}: missing '_id' (keys found: {keys}); every line needs a unique \"_id\""
        )
    value = obj["_id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(f"{path}:{lineno}: '_id' must be a string or an integer, got {value!r}")
    return _check_id(str(value), path, lineno, "'_id'")


def _text_field(obj: dict, key: str, path: Path, lineno: int) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    problem = text_problem(value)
    if problem:
        raise DataFormatError(f"{path}:{lineno}: '{key}' {problem}")
    return value


def _check_unique(seen: dict[str, int], key: str, path: Path, lineno: int, kind: str) -> None:
    if key in seen:
        raise DataFormatError(
            f"{path}:{lineno}: duplicate {kind} id {key!r} (first seen on line {seen[key]}); ids must be unique"
        )
    seen[key] = lineno


def load_corpus(path: str | Path) -> Corpus:
    """Read a BEIR ``corpus.jsonl`` or an MS MARCO ``collection.tsv`` (chosen by the file name)."""
    path = Path(path)
    seen: dict[str, int] = {}
    docs: list[Document] = []
    empty = 0
    if path.suffix == ".tsv":
        for lineno, line in read_text_lines(path):
            parts = line.split("\t")
            if len(parts) not in (2, 3):
                raise DataFormatError(
                    f"{path}:{lineno}: expected 'id<TAB>text' (or 'id<TAB>title<TAB>text'), found {len(parts)} columns"
                )
            doc_id = _check_id(parts[0], path, lineno, "document id")
            _check_unique(seen, doc_id, path, lineno, "document")
            title, text = (parts[1], parts[2]) if len(parts) == 3 else ("", parts[1])
            docs.append(Document(doc_id, text.strip(), title.strip()))
            empty += not docs[-1].contents
    else:
        for lineno, obj in _json_lines(path):
            doc_id = _id_of(obj, path, lineno)
            _check_unique(seen, doc_id, path, lineno, "document")
            docs.append(
                Document(doc_id, _text_field(obj, "text", path, lineno), _text_field(obj, "title", path, lineno))
            )
            empty += not docs[-1].contents
    if not docs:
        raise DataFormatError(f"{path}: the corpus has no documents")
    if empty:
        warnings.warn(f"{path}: {empty} document(s) have neither title nor text; they can never be retrieved by text", DataWarning, stacklevel=2)
    return Corpus(docs)


def load_queries(path: str | Path) -> Queries:
    """Read a BEIR ``queries.jsonl`` or an MS MARCO ``queries.<split>.tsv``."""
    path = Path(path)
    seen: dict[str, int] = {}
    items: list[tuple[str, str]] = []
    if path.suffix == ".tsv":
        for lineno, line in read_text_lines(path):
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataFormatError(f"{path}:{lineno}: expected 'qid<TAB>text', found {len(parts)} columns")
            qid = _check_id(parts[0], path, lineno, "query id")
            _check_unique(seen, qid, path, lineno, "query")
            items.append((qid, parts[1].strip()))
    else:
        for lineno, obj in _json_lines(path):
            qid = _id_of(obj, path, lineno)
            _check_unique(seen, qid, path, lineno, "query")
            if "text" not in obj:
                raise DataFormatError(f"{path}:{lineno}: query {qid!r} has no 'text' field")
            items.append((qid, _text_field(obj, "text", path, lineno)))
    if not items:
        raise DataFormatError(f"{path}: the file holds no queries")
    empty = [q for q, text in items if not text.strip()]
    if empty:
        warnings.warn(f"{path}: {len(empty)} query text(s) are empty (e.g. {empty[0]!r}); they retrieve nothing and "
                      f"score 0 on every measure", DataWarning, stacklevel=2)
    return Queries(items)


def load_qrels(path: str | Path) -> Qrels:
    """Read judgements: BEIR ``query-id corpus-id score`` (3 columns, optional header) or
    TREC ``qid iter docid grade`` (4 columns)."""
    path = Path(path)
    qrels: Qrels = {}
    where: dict[tuple[str, str], int] = {}
    first = True
    for lineno, line in read_text_lines(path):
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if first:
            first = False
            if parts[0].lower() in ("query-id", "query_id", "qid", "query"):
                continue  # header row
        if len(parts) == 3:
            qid, doc_id, grade = parts
        elif len(parts) == 4:
            qid, _, doc_id, grade = parts
        else:
            raise DataFormatError(
                f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score' or 'qid 0 docid grade', "
                f"found {len(parts)} columns"
            )
        try:
            value = int(float(grade))
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: relevance grade must be an integer, got {grade!r}") from None
        if float(grade) != value:
            raise DataFormatError(f"{path}:{lineno}: relevance grade must be an integer, got {grade!r}")
        if not qid or not doc_id:
            raise DataFormatError(f"{path}:{lineno}: empty query or document id")
        if (qid, doc_id) in where:
            raise DataFormatError(
                f"{path}:{lineno}: judgement for query {qid!r} and document {doc_id!r} repeats line "
                f"{where[(qid, doc_id)]}; keep one"
            )
        where[(qid, doc_id)] = lineno
        qrels.setdefault(qid, {})[doc_id] = value
    if not qrels:
        raise DataFormatError(f"{path}: no judgements found")
    return qrels


def _check_qrels(qrels: Qrels, queries: Queries, corpus: Corpus, path: Path) -> Qrels:
    """Drop judgements for unknown queries or documents, with one warning that counts them."""
    unknown_q = [q for q in qrels if q not in queries]
    unknown_d = sum(1 for q, docs in qrels.items() if q in queries for d in docs if d not in corpus)
    if unknown_q:
        n = sum(len(qrels[q]) for q in unknown_q)
        warnings.warn(
            f"{path}: {n} judgement(s) name {len(unknown_q)} query id(s) not in the queries file "
            f"(e.g. {unknown_q[0]!r}); they are ignored",
            DataWarning,
            stacklevel=3,
        )
    if unknown_d:
        example = next(d for q, docs in qrels.items() if q in queries for d in docs if d not in corpus)
        warnings.warn(
            f"{path}: {unknown_d} judgement(s) name document ids not in the corpus (e.g. {example!r}); they are ignored",
            DataWarning,
            stacklevel=3,
        )
    if not unknown_q and not unknown_d:
        return qrels
    cleaned = {
        q: {d: g for d, g in docs.items() if d in corpus}
        for q, docs in qrels.items()
        if q in queries
    }
    return {q: docs for q, docs in cleaned.items() if docs}


def _is_beir(path: Path) -> bool:
    return (path / "corpus.jsonl").is_file()


def _is_msmarco(path: Path) -> bool:
    return (path / "collection.tsv").is_file()


def available_splits(path: str | Path) -> list[str]:
    path = Path(path)
    if _is_beir(path):
        return sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
    if _is_msmarco(path):
        return sorted(p.name[len("qrels."):-len(".tsv")] for p in path.glob("qrels.*.tsv"))
    return []


def _unknown_split(path: Path, split: str) -> DataFormatError:
    splits = available_splits(path)
    return DataFormatError(
        f"{path}: unknown split {split!r}; available splits: {', '.join(splits) if splits else 'none'}"
    )


def load_beir(path: str | Path, split: str) -> Dataset:
    """A BEIR folder; the queries returned are those judged in ``split``."""
    path = Path(path)
    qrels_path = path / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise _unknown_split(path, split)
    corpus = load_corpus(path / "corpus.jsonl")
    queries = load_queries(path / "queries.jsonl")
    qrels = _check_qrels(load_qrels(qrels_path), queries, corpus, qrels_path)
    return Dataset(path.name, path, split, corpus, queries.subset(q for q in queries if q in qrels), qrels)


def load_msmarco(path: str | Path, split: str) -> Dataset:
    """An MS MARCO-layout folder: collection.tsv, queries.<split>.tsv, qrels.<split>.tsv."""
    path = Path(path)
    qrels_path = path / f"qrels.{split}.tsv"
    queries_path = path / f"queries.{split}.tsv"
    if not qrels_path.is_file():
        raise _unknown_split(path, split)
    if not queries_path.is_file():
        raise DataFormatError(f"{path}: split {split!r} has {qrels_path.name} but no {queries_path.name}")
    corpus = load_corpus(path / "collection.tsv")
    queries = load_queries(queries_path)
    qrels = _check_qrels(load_qrels(qrels_path), queries, corpus, qrels_path)
    return Dataset(path.name, path, split, corpus, queries.subset(q for q in queries if q in qrels), qrels)


IRDS = "irds:"


def is_irds(path: str | Path) -> bool:
    """``irds:<id>``: a dataset of the ir_datasets catalogue rather than a folder."""
    return str(path).startswith(IRDS)


def dataset_name(path: str | Path) -> str:
    """What a dataset's results are filed under: the folder's name, or the ir_datasets id with ``-`` for ``/``."""
    return str(path)[len(IRDS):].strip("/").replace("/", "-") if is_irds(path) else Path(path).name


def resolve_irds(path: str | Path, split: str | None):
    """The ir_datasets dataset ``irds:<id>`` names: ``<id>/<split>`` when the catalogue has it (``irds:beir/scifact``
    with split ``test``), else ``<id>`` itself (``irds:beir/scifact/test``), which must have judgements."""
    try:
        import ir_datasets
    except ImportError:
        raise ImportError("irds: datasets are read with ir_datasets: pip install ir-datasets") from None
    name = str(path)[len(IRDS):].strip("/")
    for candidate in ([f"{name}/{split}"] if split else []) + [name]:
        if candidate in ir_datasets.registry:
            dataset = ir_datasets.load(candidate)
            if dataset.has_docs() and dataset.has_queries() and dataset.has_qrels():
                return candidate, dataset
            if candidate == name:
                raise DataFormatError(f"{path}: this ir_datasets dataset has no judged queries"
                                      + (f" (and {name}/{split} is not in the catalogue)" if split else "")
                                      + "; name a subset with documents, queries and qrels, e.g. irds:beir/scifact/test")
    raise DataFormatError(f"{path}: not in the ir_datasets catalogue" + (f" (nor is {name}/{split})" if split else "")
                          + "; see https://ir-datasets.com for the ids, e.g. irds:beir/scifact/test")


def load_irds(path: str | Path, split: str | None = None) -> Dataset:
    """``irds:<id>`` through ir_datasets (documents, queries and judgements as its catalogue gives them; what it
    needs is downloaded by ir_datasets into ``$IR_DATASETS_HOME`` once, or read from there offline)."""
    name, dataset = resolve_irds(path, split)
    corpus = Corpus(Document(d.doc_id, getattr(d, "text", None) or d.default_text(), getattr(d, "title", "") or "")
                    for d in dataset.docs_iter())
    queries = Queries((q.query_id, getattr(q, "text", None) or q.default_text()) for q in dataset.queries_iter())
    qrels: dict[str, dict[str, int]] = {}
    for r in dataset.qrels_iter():
        qrels.setdefault(r.query_id, {})[r.doc_id] = int(r.relevance)
    qrels = _check_qrels(qrels, queries, corpus, Path(str(path)))
    label = split if split and name.endswith(f"/{split}") else name.rsplit("/", 1)[-1]  # the id's own split wins
    return Dataset(name.replace("/", "-"), Path(IRDS + name), label, corpus,
                   queries.subset(q for q in queries if q in qrels), qrels)


def load_dataset(path: str | Path, split: str) -> Dataset:
    """Load a BEIR or MS MARCO folder, telling the two apart by their files, or ``irds:<id>`` (ir_datasets)."""
    if is_irds(path):
        return load_irds(path, split)
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: dataset folder not found")
    if _is_beir(path):
        return load_beir(path, split)
    if _is_msmarco(path):
        return load_msmarco(path, split)
    raise DataFormatError(
        f"{path}: not a dataset folder: expected corpus.jsonl + queries.jsonl + qrels/<split>.tsv (BEIR) "
        f"or collection.tsv + queries.<split>.tsv + qrels.<split>.tsv (MS MARCO)"
    )
