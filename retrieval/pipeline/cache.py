"""Each part of the pipeline trained (or built) once and cached by its data and settings.

Under the cache folder (``$RETRIEVAL_CACHE`` or ``~/.cache/retrieval``): ``bm25/`` (indexes by corpus checksum),
``dense/`` (document indexes by corpus, encoder and factory), ``adapters/`` (trained LoRA adapters by mode, data,
base weights and training settings, with ``train_result.json`` beside them), ``openvino/`` (exports by what they
were made from). ``build_pipeline`` and the benchmark runner both take their parts from here, so the same part is
trained once.

How a trained model runs on the CPU (``inference``: torch, or an OpenVINO export) is part of each cached part:
the documents of an index are encoded the way the stage will encode queries and new documents.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Callable

from encoders.bi_encoder import BiEncoder
from encoders.train import default_settings, train_dense
from rerankers.cross_encoder import CrossEncoderReranker
from rerankers.train import RerankTrainSettings, train_reranker

from ..lora.examples import pseudo_queries
from ..lora.host import QualityRefused
from ..lora.openvino import precision_of
from ..stages.bm25 import BM25, DEFAULT_BACKEND
from ..stages.dense import document_index
from ..types import Corpus, Qrels, Queries
from ..util import CacheWarning, DamagedArtefact, default_cache_dir, read_json


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(root: Path, load):
    """``load()`` of a cache entry if there is one and every file and setting of it is as written; else None
    (a damaged entry, or one written without checksums, is removed with a warning and built again)."""
    if not root.exists():
        return None
    try:
        return load()
    except (DamagedArtefact, FileNotFoundError, ValueError) as e:
        warnings.warn(f"training again: the cached adapter cannot be reused: {e}", CacheWarning, stacklevel=3)
        shutil.rmtree(root)
        return None


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir()


def bm25_stage(corpus: Corpus, cache_dir=None, k: int = 1000, threads: int | None = None,
               backend: str = DEFAULT_BACKEND) -> tuple[BM25, bool]:
    """The BM25 stage over ``corpus`` (index cached by engine and corpus checksum). Returns (stage, built_now)."""
    return BM25.from_corpus(corpus, backend=backend, cache_dir=cache_root(cache_dir) / "bm25", k=k, threads=threads)


CALIBRATION_TEXTS = 256  # per side: half calibrate an int8 export, half check it against torch


def corpus_texts(corpus: Corpus, seed: int = 0, n: int = CALIBRATION_TEXTS) -> dict[str, list[str]]:
    """Text from the corpus itself, to calibrate and check exports: documents, and pseudo-queries (titles or
    sentences) for the query side; a seeded sample."""
    rng = random.Random(seed)
    ids = sorted(corpus)
    docs = [corpus[d].contents for d in rng.sample(ids, min(n, len(ids)))]
    queries = [p.query for p in pseudo_queries(corpus, seed)]
    queries = rng.sample(queries, min(n, len(queries))) if len(queries) >= 4 else docs
    return {"document": docs, "query": queries}


def with_inference(model, inference: str, corpus: Corpus, cache_dir=None, sides=("query", "document"),
                   pairs: tuple[list[str], list[str]] | None = None, log=None) -> dict:
    """Run ``model`` (a BiEncoder, or with ``pairs`` a CrossEncoderReranker) the way ``inference`` says, on the CPU.

    Exports are calibrated and checked on the corpus's own text (``corpus_texts``; for a reranker ``pairs`` of
    queries and first-stage candidates); an export the check refuses leaves the model on torch, and the returned
    record says so and why. A model on a GPU stays on torch."""
    record = {"requested": inference, "used": "torch"}
    precision = precision_of(inference)
    if precision is None:
        return record
    if model.device != "cpu":
        return {**record, "reason": f"the model runs on {model.device}: OpenVINO exports are for CPUs"}
    root = cache_root(cache_dir)  # the exports go to its openvino/ folder
    try:
        if pairs is not None:
            report = model.use_openvino(precision, *pairs, cache_dir=root)
        else:
            report = model.use_openvino(precision, corpus_texts(corpus), sides=sides, cache_dir=root)
    except QualityRefused as e:
        if log:
            log(f"staying on torch: {e}")
        return {**record, "used": model.inference, "reason": str(e), "report": model.export_report}
    return {**record, "used": inference, "report": report}


def calibration_pairs(corpus: Corpus, examples, first_stage, seed: int = 0, queries: int = 64,
                      depth: int = 8) -> tuple[list[str], list[str]]:
    """(queries, documents) like those a reranker scores: a seeded sample of the training examples' queries, each
    with the first stage's top ``depth`` candidates."""
    texts = {e.qid: e.query for e in examples}
    qids = random.Random(seed).sample(sorted(texts), min(queries, len(texts)))
    ranking = first_stage.search(Queries({q: texts[q] for q in qids}), k=depth)
    pairs = [(texts[q], corpus[d].contents) for q in qids for d, _ in ranking.ranked(q)]
    return [q for q, _ in pairs], [d for _, d in pairs]


def first_stage_facts(stage: BM25) -> dict:
    """What decides a BM25 stage's rankings, for the cache key of anything trained on its negatives."""
    return {"backend": stage.backend, "k1": stage.k1, "b": stage.b}


def base_index(encoder, corpus: Corpus, factory: str = "Flat", cache_dir=None, executor=None):
    """The encoder's document index (cached by corpus, encoder and factory): (index, built_now, folder);
    ``executor`` encodes the documents (default: here; a ``RayExecutor``: on a Ray cluster)."""
    return document_index(encoder, corpus, factory, cache_dir=cache_root(cache_dir) / "dense", executor=executor)


def dense_adapter(mode: str, corpus: Corpus, queries: Queries | None, qrels: Qrels | None, index,
                  epochs: int | None = None, cache_dir=None, bm25=None, split: str = "train",
                  model: str | None = None, inference: str = "torch", seed: int = 0,
                  dropout: str | None = None) -> tuple[BiEncoder, dict]:
    """A bi-encoder with a LoRA adapter trained for ``mode`` (see ``encoders.train.train_dense``), run the way
    ``inference`` says once trained; cached by data and settings. ``seed`` splits off its validation queries
    (the same ones as the reranker's of that seed) and shuffles; ``dropout`` (one of ``DROPOUTS``; default: the
    mode's, ``encoders.train.default_dropout``) says which dropout layers train. Returns (encoder, training info).

    A query-side adapter trains against ``index``'s vectors, so its documents are encoded as the index's were
    (the same export, from the cache) and only the query side is exported after training."""
    enc = BiEncoder(model)
    query_side = mode in ("query", "corpus-query")
    if query_side:  # the documents' side, as the index encoded them
        with_inference(enc, inference, corpus, cache_dir, sides=("document",))
    settings = default_settings(mode, epochs, seed, dropout)
    labelled = mode in ("query", "supervised")
    data = ({"queries": sorted(queries.items()), "qrels": sorted((q, sorted(d.items())) for q, d in qrels.items())}
            if labelled else {"pseudo": "title/sentence pseudo-queries, seed 0"})
    key = _key({"mode": mode, "corpus": corpus.fingerprint(), **data, "encoder": enc.fingerprint("document"),
                "settings": settings.to_dict(), **({"negatives": first_stage_facts(bm25)} if bm25 is not None else {}),
                "inference": inference})
    root = cache_root(cache_dir) / "adapters" / f"dense-{mode}-{key}"
    hit = _cached(root, lambda: (BiEncoder.load(root, require_checksums=True),
                                 read_json(root / "train_result.json", "training result")))
    sides = ("query",) if query_side else ("query", "document")
    if hit is not None:
        return _exported_again(hit, lambda enc: with_inference(enc, inference, corpus, cache_dir, sides=sides))
    documents_exported = query_side and enc.inference_of("document") != "torch"
    # training runs torch: the query side has no export, and adding the adapter drops every export
    enc, result = train_dense(mode, corpus, queries if labelled else None, qrels if labelled else None,
                              settings, enc, index, bm25)
    if documents_exported:  # the index's documents again (the export comes from the cache), then the queries
        with_inference(enc, inference, corpus, cache_dir, sides=("document",))
    info = {"split": split if labelled else "none (pseudo-queries from the corpus)", "cached_at": str(root),
            **result.to_dict(), "inference": with_inference(enc, inference, corpus, cache_dir, sides=sides)}
    # its held-out split decides weights; a cache entry is read by this library only (no base weights for plain
    # sentence-transformers loaders: the pipeline folder it goes into writes them)
    enc.save(root, overwrite=True, extra_json={"train_result.json": info}, sentence_transformers=False)
    return enc, info


def _exported_again(hit: tuple, export: Callable) -> tuple:
    """A cached (model, training info) whose int8 export is not what this CPU's ``int8_scope="auto"`` makes (cached
    before the choice existed, or on another kind of CPU): exported again by ``export(model)`` (the adapter is
    reused; the export itself is cached by what it is made from)."""
    model, info = hit
    if model.exports_current():
        return hit
    return model, {**info, "inference": export(model)}


def reranker(corpus: Corpus, examples, first_stages, settings: RerankTrainSettings, negatives_from: dict,
             cache_dir=None, split: str = "train", model: str | None = None,
             precision: str = "auto", inference: str = "torch", teacher=None,
             teacher_from: dict | None = None, base=None,
             base_from: dict | None = None) -> tuple[CrossEncoderReranker, dict]:
    """A cross-encoder with a LoRA adapter trained on ``examples``, negatives from ``first_stages``, run the way
    ``inference`` says once trained (its export calibrated on the examples' queries and the first stage's
    candidates); cached by data, settings and the first stages (``negatives_from`` describes them; with a
    ``teacher`` to distil from, ``teacher_from`` describes it; with a residual ``base``, ``base_from``). Every
    epoch's adapter is kept under ``epochs/`` for the per-epoch report. Returns (reranker, training info)."""
    from safetensors.torch import save_file

    model = CrossEncoderReranker(model, max_length=settings.max_length, precision=precision, passage=settings.passage,
                                 keep_layers=settings.keep_layers)
    scorers = {**({"teacher": teacher_from} if teacher is not None else {}),  # keyed and recorded alike
               **({"residual_base": base_from} if base is not None else {})}
    key = _key({"mode": settings.mode, "corpus": corpus.fingerprint(),
                "examples": [(e.qid, e.query, sorted(e.positives)) for e in examples],
                "base": model.base_fingerprint(), "settings": settings.to_dict(), "negatives_from": negatives_from,
                "inference": inference, **scorers})
    root = cache_root(cache_dir) / "adapters" / f"rerank-{settings.mode}-{key}"
    hit = _cached(root, lambda: (CrossEncoderReranker.load(root, precision=precision, require_checksums=True),
                                 read_json(root / "train_result.json", "training result")))
    if hit is not None:
        return _exported_again(hit, lambda m: with_inference(
            m, inference, corpus, cache_dir, pairs=calibration_pairs(corpus, examples, first_stages[0], settings.seed)))
    states: dict[int, dict] = {}
    result = train_reranker(model, corpus, examples, first_stages, settings, teacher=teacher, base=base,
                            on_epoch=lambda epoch, state: states.__setitem__(epoch, state))
    info = {"split": split if settings.mode == "supervised" else "none (pseudo-queries from the corpus)",
            "cached_at": str(root), "negatives_from": negatives_from, **scorers, **result.to_dict(),
            "inference": with_inference(model, inference, corpus, cache_dir,
                                        pairs=calibration_pairs(corpus, examples, first_stages[0], settings.seed))}
    model.save(root, overwrite=True, extra_json={"train_result.json": info})
    (root / "epochs").mkdir()  # each epoch's adapter, for the per-epoch report only
    for epoch, state in states.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / "epochs" / f"epoch-{epoch}.safetensors"))
    return model, info
