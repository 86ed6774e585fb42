"""A built pipeline saved to one folder and loaded with one call.

Layout of a pipeline folder::

    pipeline.json           format, the stages in order with their settings, and what each was built with
    corpus.jsonl            the documents (BEIR layout): the reranker reads their text, a service shows it
    stages/<name>/          one folder per stage:
        bm25: the Lucene (or rank-bm25) index folder itself
        dense: encoder/ (BiEncoder.save) and index/ (FaissIndex.save)
        rerank: reranker/ (CrossEncoderReranker.save)

``load_pipeline`` checks that the parts fit together before anything is searched: every index was built
from the saved corpus, the FAISS index from the encoder (base model and document-side adapter) that the
dense stage loads, the reranker's adapter for the base model it loads on; a mismatch raises
``PipelineMismatch`` naming the part and both fingerprints.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .stage import Pipeline
from .types import Corpus
from .util import atomic_dir, library_version, read_json, sha256_file, write_json

FORMAT = 1
CONFIG_NAME = "pipeline.json"


class PipelineMismatch(ValueError):
    """The parts of a saved pipeline do not fit together (another corpus, encoder or base model)."""


class DamagedPipeline(ValueError):
    """A file of a saved pipeline is missing or does not match the checksum recorded when it was saved."""


def _fusion_dict(fusion) -> dict | None:
    return fusion.to_dict() if fusion is not None else None


def _fusion(d: dict | None):
    from .stages.fusion import Fusion

    return Fusion(**{**d, "weights": tuple(d["weights"])}) if d else None


def write_corpus(corpus: Corpus, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for doc in corpus.values():
            f.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}, ensure_ascii=False) + "\n")


def save_pipeline(pipeline: Pipeline, path: str | os.PathLike, corpus: Corpus, info: dict | None = None,
                  overwrite: bool = False) -> Path:
    """Write ``pipeline`` (BM25, Dense and Rerank stages) and ``corpus`` to the folder ``path``.

    ``info`` (e.g. how each stage was trained) is stored in ``pipeline.json`` under ``"info"``. The folder
    is written under a temporary name and renamed, so a crash never leaves half a pipeline.
    """
    from .stages.bm25 import BM25
    from .stages.dense import Dense
    from .stages.rerank import Rerank

    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline([pipeline])
    fingerprint = corpus.fingerprint()
    with atomic_dir(path, overwrite=overwrite) as tmp:
        stages = []
        for stage in pipeline.stages:
            folder = tmp / "stages" / stage.name
            entry: dict = {"name": stage.name, "k": stage.k, "path": f"stages/{stage.name}"}
            if isinstance(stage, BM25):
                if stage.corpus_fingerprint != fingerprint:
                    raise PipelineMismatch(f"{stage.name}: the BM25 index was built from another corpus "
                                           f"({stage.corpus_fingerprint[:12]}, given {fingerprint[:12]})")
                shutil.copytree(stage.index_dir, folder, ignore=shutil.ignore_patterns("*.tmp-*"))
                entry.update(type="bm25", backend=stage.backend, k1=stage.k1, b=stage.b)
            elif isinstance(stage, Dense):
                _check_ids(stage.index.ids, corpus, stage.name)
                stage.encoder.save(folder / "encoder")
                stage.index.save(folder / "index")
                entry.update(type="dense", mode=stage.mode, neighbours=stage.neighbours,
                             fusion=_fusion_dict(stage.fusion), factory=stage.index.factory,
                             encoder_query=stage.encoder.fingerprint("query"),
                             encoder_document=stage.encoder.fingerprint("document"))
            elif isinstance(stage, Rerank):
                stage.reranker.save(folder / "reranker")
                entry.update(type="rerank", fusion=_fusion_dict(stage.fusion), keep_rest=stage.keep_rest,
                             reranker=stage.reranker.fingerprint())
            else:
                raise TypeError(f"{stage.name}: cannot save a {type(stage).__name__} stage; a saved pipeline "
                                f"holds BM25, Dense and Rerank stages")
            stages.append(entry)
        write_corpus(corpus, tmp / "corpus.jsonl")
        write_json(tmp / CONFIG_NAME, {
            "kind": "pipeline", "format": FORMAT, "name": pipeline.name, "stages": stages,
            "corpus": {"fingerprint": fingerprint, "documents": len(corpus)},
            "library_version": library_version(), "info": info or {},
            "checksums": manifest(tmp),
        })
    return Path(path)


def _check_ids(ids, corpus: Corpus, name: str) -> None:
    stored = {d for d in ids if d is not None}
    missing = [d for d in stored if d not in corpus]
    if missing or len(stored) != len(corpus):
        raise PipelineMismatch(f"{name}: the FAISS index holds {len(stored)} documents, the corpus {len(corpus)}"
                               + (f" (e.g. {missing[0]!r} is not in the corpus)" if missing else "")
                               + "; the index was built from another corpus")


def manifest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (``pipeline.json`` aside), by relative path."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p != folder / CONFIG_NAME}


def verify(path: str | os.PathLike, config: dict | None = None) -> None:
    """Raise ``DamagedPipeline`` if a file of a saved pipeline is missing or differs from its checksum."""
    path = Path(path)
    config = config or pipeline_config(path)
    for name, digest in config.get("checksums", {}).items():
        f = path / name
        if not f.is_file():
            raise DamagedPipeline(f"{path}: {name} is missing; the pipeline folder is incomplete")
        if sha256_file(f) != digest:
            raise DamagedPipeline(f"{path}: {name} does not match its checksum; the pipeline is damaged "
                                  f"(restore it from a copy or train it again)")


def pipeline_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    config = read_json(path / CONFIG_NAME, "pipeline config (write one with save_pipeline or `python -m retrieval train`)")
    if config.get("kind") != "pipeline":
        raise ValueError(f"{path}: {CONFIG_NAME} describes a {config.get('kind')!r}, not a pipeline")
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: pipeline format {config.get('format')!r}; this library reads format {FORMAT}")
    return config


def is_pipeline_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def load_pipeline(path: str | os.PathLike, device: str | None = None, threads: int | None = None,
                  corpus: Corpus | None = None, models=None, adapter_prefix: str | None = None,
                  check_files: bool = True) -> tuple[Pipeline, Corpus, dict]:
    """Load a saved pipeline: (pipeline, its corpus, pipeline.json). Checks that the parts fit together.

    ``check_files`` compares every file with the checksum recorded when the folder was saved
    (``DamagedPipeline`` names the file). With ``models`` (a ``retrieval.adapters.SharedModels``) the
    encoder and reranker are views over base models shared with other pipelines, their adapters loaded
    under ``adapter_prefix``.
    """
    from benchmarks.datasets import load_corpus
    from encoders.bi_encoder import BiEncoder
    from rerankers.cross_encoder import CrossEncoderReranker

    from .index.faiss import FaissIndex, IndexMismatch
    from .stages.bm25 import BM25
    from .stages.dense import Dense
    from .stages.rerank import Rerank

    path = Path(path)
    config = pipeline_config(path)
    if check_files:
        verify(path, config)
    if models is not None and not adapter_prefix:
        raise ValueError("load_pipeline: shared models need an adapter_prefix (e.g. the domain's name)")
    corpus = corpus if corpus is not None else load_corpus(path / "corpus.jsonl")
    if corpus.fingerprint() != config["corpus"]["fingerprint"]:
        raise PipelineMismatch(f"{path}: corpus.jsonl is not the corpus the pipeline was built from "
                               f"({corpus.fingerprint()[:12]} vs {config['corpus']['fingerprint'][:12]}); it was changed")
    stages = []
    for entry in config["stages"]:
        folder, name, kind = path / entry["path"], entry["name"], entry.get("type")
        if kind == "bm25":
            stage = BM25(folder, k=entry["k"], k1=entry["k1"], b=entry["b"], threads=threads, name=name)
            if stage.corpus_fingerprint != corpus.fingerprint():
                raise PipelineMismatch(f"{name}: the BM25 index in {folder} was built from another corpus "
                                       f"({stage.corpus_fingerprint[:12]}, the pipeline's is {corpus.fingerprint()[:12]})")
        elif kind == "dense":
            encoder = (models.encoder(folder / "encoder", f"{adapter_prefix}_{name}") if models is not None
                       else BiEncoder.load(folder / "encoder", device=device))
            for side in ("query", "document"):
                if encoder.fingerprint(side) != entry[f"encoder_{side}"]:
                    raise PipelineMismatch(f"{name}: the encoder in {folder / 'encoder'} encodes {side}s as "
                                           f"{encoder.fingerprint(side)}, the pipeline was built with "
                                           f"{entry[f'encoder_{side}']}")
            try:
                index = FaissIndex.load(folder / "index", encoder_fingerprint=encoder.fingerprint("document"),
                                        verify=not (check_files and config.get("checksums")))  # hashed once
            except IndexMismatch as e:
                raise PipelineMismatch(f"{name}: {e}") from None
            _check_ids(index.ids, corpus, name)
            stage = Dense(encoder, index, mode=entry["mode"], k=entry["k"], fusion=_fusion(entry.get("fusion")),
                          neighbours=entry["neighbours"], name=name)
        elif kind == "rerank":
            reranker = (models.reranker(folder / "reranker", f"{adapter_prefix}_{name}") if models is not None
                        else CrossEncoderReranker.load(folder / "reranker", device=device))
            if reranker.fingerprint() != entry["reranker"]:
                raise PipelineMismatch(f"{name}: the reranker in {folder / 'reranker'} is {reranker.fingerprint()}, "
                                       f"the pipeline was built with {entry['reranker']}")
            stage = Rerank(reranker, corpus, k=entry["k"], fusion=_fusion(entry.get("fusion")),
                           keep_rest=entry.get("keep_rest", False), name=name)
        else:
            raise ValueError(f"{path}: stage {name!r} has unknown type {kind!r}")
        stages.append(stage)
    return Pipeline(stages, name=config.get("name")), corpus, config


def folder_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of every file under ``path`` (an index or a pipeline folder)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
