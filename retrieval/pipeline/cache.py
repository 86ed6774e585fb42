"""Each part of the pipeline trained (or built) once and cached by its data and settings.

Under the cache folder (``$RETRIEVAL_CACHE`` or ``~/.cache/retrieval``): ``bm25/`` (indexes by corpus checksum),
``dense/`` (document indexes by corpus, encoder and factory), ``adapters/`` (trained LoRA adapters by mode, data,
base weights and training settings, with ``train_result.json`` beside them). ``build_pipeline`` and the
benchmark runner both take their parts from here, so the same part is trained once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

from encoders.bi_encoder import BiEncoder
from encoders.train import default_settings, train_dense
from rerankers.cross_encoder import CrossEncoderReranker
from rerankers.train import RerankTrainSettings, train_reranker

from ..stages.bm25 import BM25, DEFAULT_BACKEND
from ..stages.dense import document_index
from ..types import Corpus, Qrels, Queries
from ..util import CacheWarning, DamagedArtefact, default_cache_dir, read_json

CORPUS_RERANK_ITEMS = 800  # corpus-only reranker: pseudo-queries trained on by default (~7 minutes an epoch on 2 cores)


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


def first_stage_facts(stage: BM25) -> dict:
    """What decides a BM25 stage's rankings, for the cache key of anything trained on its negatives."""
    return {"backend": stage.backend, "k1": stage.k1, "b": stage.b}


def base_index(encoder, corpus: Corpus, factory: str = "Flat", cache_dir=None):
    """The encoder's document index (cached by corpus, encoder and factory): (index, built_now, folder)."""
    return document_index(encoder, corpus, factory, cache_dir=cache_root(cache_dir) / "dense")


def dense_adapter(mode: str, corpus: Corpus, queries: Queries | None, qrels: Qrels | None, index,
                  epochs: int | None = None, cache_dir=None, bm25=None, split: str = "train",
                  model: str | None = None) -> tuple[BiEncoder, dict]:
    """A bi-encoder with a LoRA adapter trained for ``mode`` (see ``encoders.train.train_dense``), cached by
    data and settings. Returns (encoder, training info)."""
    enc = BiEncoder(model)
    settings = default_settings(mode, epochs)
    labelled = mode in ("query", "supervised")
    data = ({"queries": sorted(queries.items()), "qrels": sorted((q, sorted(d.items())) for q, d in qrels.items())}
            if labelled else {"pseudo": "title/sentence pseudo-queries, seed 0"})
    key = _key({"mode": mode, "corpus": corpus.fingerprint(), **data, "encoder": enc.fingerprint("document"),
                "settings": settings.to_dict(), **({"negatives": first_stage_facts(bm25)} if bm25 is not None else {})})
    root = cache_root(cache_dir) / "adapters" / f"dense-{mode}-{key}"
    hit = _cached(root, lambda: (BiEncoder.load(root, require_checksums=True),
                                 read_json(root / "train_result.json", "training result")))
    if hit is not None:
        return hit
    enc, result = train_dense(mode, corpus, queries if labelled else None, qrels if labelled else None,
                              settings, enc, index, bm25)
    info = {"split": split if labelled else "none (pseudo-queries from the corpus)", "cached_at": str(root),
            **result.to_dict()}
    enc.save(root, overwrite=True, extra_json={"train_result.json": info})  # its held-out split decides weights
    return enc, info


def rerank_settings(corpus_only: bool, epochs: int, max_items: int | None, seed: int = 0) -> RerankTrainSettings:
    mode = "corpus" if corpus_only else "supervised"
    if max_items is None and corpus_only:
        max_items = CORPUS_RERANK_ITEMS
    return RerankTrainSettings(mode=mode, epochs=epochs, max_items=max_items, seed=seed)


def reranker(corpus: Corpus, examples, first_stages, settings: RerankTrainSettings, negatives_from: dict,
             cache_dir=None, split: str = "train", model: str | None = None,
             precision: str = "auto") -> tuple[CrossEncoderReranker, dict]:
    """A cross-encoder with a LoRA adapter trained on ``examples``, negatives from ``first_stages``;
    cached by data, settings and the first stages (``negatives_from`` describes them). Every epoch's adapter
    is kept under ``epochs/`` for the per-epoch report. Returns (reranker, training info)."""
    from safetensors.torch import save_file

    model = CrossEncoderReranker(model, max_length=settings.max_length, precision=precision)
    key = _key({"mode": settings.mode, "corpus": corpus.fingerprint(),
                "examples": [(e.qid, e.query, sorted(e.positives)) for e in examples],
                "base": model.base_fingerprint(), "settings": settings.to_dict(), "negatives_from": negatives_from})
    root = cache_root(cache_dir) / "adapters" / f"rerank-{settings.mode}-{key}"
    hit = _cached(root, lambda: (CrossEncoderReranker.load(root, precision=precision, require_checksums=True),
                                 read_json(root / "train_result.json", "training result")))
    if hit is not None:
        return hit
    states: dict[int, dict] = {}
    result = train_reranker(model, corpus, examples, first_stages, settings,
                            on_epoch=lambda epoch, state: states.__setitem__(epoch, state))
    info = {"split": split if settings.mode == "supervised" else "none (pseudo-queries from the corpus)",
            "cached_at": str(root), "negatives_from": negatives_from, **result.to_dict()}
    model.save(root, overwrite=True, extra_json={"train_result.json": info})
    (root / "epochs").mkdir()  # each epoch's adapter, for the per-epoch report only
    for epoch, state in states.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / "epochs" / f"epoch-{epoch}.safetensors"))
    return model, info
