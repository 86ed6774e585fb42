"""A built pipeline saved to one folder and loaded with one call.

Layout of a pipeline folder::

    pipeline.json           format, the stages in order with their type and settings, what each was built with,
                            and the sha256 of every other file
    corpus.jsonl            the documents (BEIR layout): the reranker reads their text, a service shows it
    stages/<name>/          one folder per stage, written by its stage kind (``retrieval.pipeline.registry``):
        bm25: the Lucene (or rank-bm25) index folder itself
        dense: encoder/ (BiEncoder.save) and index/ (FaissIndex.save)
        rerank: reranker/ (CrossEncoderReranker.save)

``load_pipeline`` checks every file against its checksum, then that the parts fit together before anything
is searched: every index was built from the saved corpus, the FAISS index from the encoder (base model and
document-side adapter) that the dense stage loads, the reranker's adapter for the base model it loads on; a
mismatch raises ``PipelineMismatch`` naming the part and both fingerprints.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from ..card import CARD_NAME, pipeline_card
from ..data import load_corpus
from ..shards import Placer
from ..stage import Pipeline
from ..types import Corpus
from ..util import (DamagedArtefact, atomic_dir, check_seal, file_checksums, library_version, read_json, sealed,
                    verify_files, write_json)
from . import kinds  # noqa: F401 - registers the built-in stage kinds
from .registry import LoadContext, PipelineMismatch, kind_named, kind_of

FORMAT = 1
CONFIG_NAME = "pipeline.json"
CORPUS_NAME = "corpus.jsonl"

__all__ = ["PipelineMismatch", "DamagedPipeline", "save_pipeline", "load_pipeline", "verify", "pipeline_config",
           "is_pipeline_dir", "write_corpus", "write_config", "folder_bytes"]


class DamagedPipeline(DamagedArtefact):
    """A file of a saved pipeline is missing or does not match the checksum recorded when it was saved, or
    ``pipeline.json`` does not match its seal."""


def write_corpus(corpus: Corpus, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for doc in corpus.values():
            f.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}, ensure_ascii=False) + "\n")


def write_config(folder: Path, config: dict) -> None:
    """Write the folder's card (``README.md``) and then ``pipeline.json`` last, with the checksum of every other
    file of the folder, sealed (the sha256 of its own content), so a change of any file or setting is found when
    the folder is loaded."""
    (folder / CARD_NAME).write_text(pipeline_card(config), encoding="utf-8")
    write_json(folder / CONFIG_NAME, sealed({**config, "checksums": file_checksums(folder, skip=(CONFIG_NAME,))}))


def save_pipeline(pipeline: Pipeline, path: str | os.PathLike, corpus: Corpus, info: dict | None = None,
                  overwrite: bool = False) -> Path:
    """Write ``pipeline`` (stages of registered kinds: BM25, Dense, Rerank, ...) and ``corpus`` to the folder
    ``path``.

    ``info`` (e.g. how each stage was trained) is stored in ``pipeline.json`` under ``"info"``. The folder
    is written under a temporary name and renamed, so a crash never leaves half a pipeline.
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline([pipeline])
    with atomic_dir(path, overwrite=overwrite) as tmp:
        stages = []
        for stage in pipeline.stages:
            kind = kind_of(stage)
            entry = {"name": stage.name, "k": stage.k, "path": f"stages/{stage.name}", "type": kind.name}
            entry.update(kind.save(stage, tmp / entry["path"], corpus))
            stages.append(entry)
        write_corpus(corpus, tmp / CORPUS_NAME)
        write_config(tmp, {
            "kind": "pipeline", "format": FORMAT, "name": pipeline.name, "stages": stages,
            "corpus": {"fingerprint": corpus.fingerprint(), "documents": len(corpus)},
            "library_version": library_version(), "info": info or {},
        })
    return Path(path)


def verify(path: str | os.PathLike, config: dict | None = None) -> None:
    """Raise ``DamagedPipeline`` if a file of a saved pipeline is missing or differs from its checksum."""
    path = Path(path)
    config = config or pipeline_config(path)
    verify_files(path, config.get("checksums", {}), "pipeline folder", DamagedPipeline)


def pipeline_config(path: str | os.PathLike) -> dict:
    """``pipeline.json``, checked against its seal (``DamagedPipeline`` if a setting was changed)."""
    path = Path(path)
    config = read_json(path / CONFIG_NAME, "pipeline config (write one with save_pipeline or `python -m retrieval train`)")
    try:
        if not check_seal(config, path / CONFIG_NAME, CONFIG_NAME):
            warnings.warn(f"{path}: {CONFIG_NAME} has no seal (saved by version {config.get('library_version')}), so "
                          f"a change of its settings cannot be detected; save the pipeline again to seal it",
                          UserWarning, stacklevel=2)
    except DamagedArtefact as e:
        raise DamagedPipeline(str(e)) from None
    if config.get("kind") != "pipeline":
        raise ValueError(f"{path}: {CONFIG_NAME} describes a {config.get('kind')!r}, not a pipeline")
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: pipeline format {config.get('format')!r}; this library reads format {FORMAT}")
    return config


def is_pipeline_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def load_pipeline(path: str | os.PathLike, device: str | None = None, threads: int | None = None,
                  corpus: Corpus | None = None, models=None, adapter_prefix: str | None = None,
                  check_files: bool = True, placer: Placer | None = None) -> tuple[Pipeline, Corpus, dict]:
    """Load a saved pipeline: (pipeline, its corpus, pipeline.json). Checks that the parts fit together.

    ``check_files`` compares every file with the checksum recorded when the folder was saved
    (``DamagedPipeline`` names the file). With ``models`` (a ``retrieval.pipeline.shared.SharedModels``) the
    encoder and reranker are views over base models shared with other pipelines, their adapters loaded
    under ``adapter_prefix``. A sharded stage's shards are opened by ``placer`` (default: in this process;
    ``retrieval.distributed.ray_placer``: one Ray actor each, on any node of the cluster).
    """
    path = Path(path)
    config = pipeline_config(path)
    if check_files:
        verify(path, config)
    if models is not None and not adapter_prefix:
        raise ValueError("load_pipeline: shared models need an adapter_prefix (e.g. the domain's name)")
    corpus = corpus if corpus is not None else load_corpus(path / CORPUS_NAME)
    if corpus.fingerprint() != config["corpus"]["fingerprint"]:
        raise PipelineMismatch(f"{path}: {CORPUS_NAME} is not the corpus the pipeline was built from "
                               f"({corpus.fingerprint()[:12]} vs {config['corpus']['fingerprint'][:12]}); it was changed")
    context = LoadContext(corpus, device=device, threads=threads, models=models, adapter_prefix=adapter_prefix,
                          check_files=bool(check_files and config.get("checksums")), placer=placer)
    stages = [kind_named(entry.get("type"), f"{path}: stage {entry['name']!r}: ").load(entry, path / entry["path"], context)
              for entry in config["stages"]]
    return Pipeline(stages, name=config.get("name")), corpus, config


def folder_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of every file under ``path`` (an index or a pipeline folder)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
