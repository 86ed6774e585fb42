"""A bi-encoder over sentence-transformers, adapted with LoRA through peft.

Queries and documents are encoded to L2-normalised float32 vectors. LoRA adapters are peft's own:
the transformer inside the SentenceTransformer is wrapped in a ``peft.PeftModel``, and a saved
model folder holds peft's untouched ``adapter_config.json`` + ``adapter_model.safetensors`` (named
adapters in sub-folders, as peft does) beside our ``retrieval_config.json``.

An adapter has a *side*: ``"both"`` adapts queries and documents; ``"query"`` adapts queries only,
so documents keep the frozen base model's vectors and an existing document index stays valid.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.lora.base import PACKAGED_ID, default_device, resolve_model
from retrieval.lora.host import CONFIG_NAME, AdapterHost, read_model_config, weights_fingerprint, write_model_config
from retrieval.lora.settings import LoraSettings
from retrieval.types import Document
from retrieval.util import atomic_dir, library_version



class BiEncoder(AdapterHost):
    """Encode queries and documents; add, save, load, switch, disable and merge LoRA adapters
    (``retrieval.lora.AdapterHost``).

    >>> enc = BiEncoder()                                  # packaged all-MiniLM-L6-v2
    >>> q = enc.encode_queries(["what causes scurvy"])     # (1, 384) float32, unit length
    >>> enc.add_lora(LoraSettings(r=16, side="query"))
    """

    def __init__(self, model: str | os.PathLike | None = None, max_length: int | None = None,
                 device: str | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.device = device or default_device()
        self.st = SentenceTransformer(resolve_model(model), device=self.device)
        if max_length is not None:
            self.st.max_seq_length = int(max_length)
        self.batch_size = batch_size
        self.base_model = str(model) if model is not None else PACKAGED_ID
        self.max_length = int(self.st.max_seq_length)
        self._doc_model = None  # merged() with a query-side adapter keeps the base for documents here
        self._doc_fp: str | None = None
        self._init_adapters()

    # ------------------------------------------------------------------ the adapter host's hooks
    @property
    def module(self):
        return self.st[0].model

    def _replace_module(self, module) -> None:
        self.st[0].model = module

    def _fingerprint_extra(self) -> bytes:
        return str(self.max_length).encode()

    def _copy_for_merge(self) -> "BiEncoder":
        clone = copy.copy(self)
        clone.st = copy.deepcopy(self.st)
        return clone

    def _after_merge(self, source: "BiEncoder") -> None:
        if self._adapters[self.merged_from]["side"] == "query":  # documents keep the base model
            base_st = copy.deepcopy(source.st)
            base_st[0].model = base_st[0].model.unload()  # peft: the base transformer, adapters removed
            self._doc_model = base_st

    # ------------------------------------------------------------------ facts
    @property
    def dim(self) -> int:
        return int(self.st.get_embedding_dimension())

    def fingerprint(self, side: str = "document") -> str:
        """Identifies what encodes ``side`` ("document" or "query"): base weights and the adapter used."""
        if side == "document" and self._doc_model is not None:
            if self._doc_fp is None:
                self._doc_fp = weights_fingerprint(self._doc_model[0].model, self._fingerprint_extra())
            return f"base:{self._doc_fp}"
        return self.adapter_fingerprint(self._adapter_for(side))

    def _adapter_for(self, side: str) -> str | None:
        if side not in ("query", "document"):
            raise ValueError(f"side must be 'query' or 'document', got {side!r}")
        name = self.active_adapter
        if name is None:
            return None
        if side == "document" and self._adapters[name]["side"] == "query":
            return None
        return name

    # ------------------------------------------------------------------ encoding
    def _encode(self, texts: list[str], side: str, batch_size: int | None, show_progress: bool | None) -> np.ndarray:
        if show_progress is None:
            show_progress = len(texts) >= 2000
        with self.lock:
            st = self._doc_model if self._doc_model is not None and side == "document" else self.st
            with self.base_only(self._adapter_for(side) is None and st is self.st):
                # sentence-transformers sorts by length inside encode, so batches are of like lengths
                vectors = st.encode(texts, batch_size=batch_size or self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=show_progress)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def embed(self, texts: Sequence[str], side: str = "query"):
        """Normalised embeddings as a torch tensor *with* gradients, for training.

        The caller holds the encoder for the step; the active adapter is used unless it does not apply
        to ``side`` (a query-side adapter when embedding documents).
        """
        import torch.nn.functional as F

        texts = _check_texts(texts, "queries" if side == "query" else "documents")
        features = self.st.preprocess(texts)
        features = {k: v.to(self.st.device) if hasattr(v, "to") else v for k, v in features.items()}
        with self.base_only(self._adapter_for(side) is None):
            return F.normalize(self.st(features)["sentence_embedding"], dim=-1)

    def encode_queries(self, texts: Sequence[str], batch_size: int | None = None,
                       show_progress: bool | None = None) -> np.ndarray:
        texts = _check_texts(texts, "queries")
        return self._encode(texts, "query", batch_size, show_progress)

    def encode_documents(self, docs: Sequence[Document | str], batch_size: int | None = None,
                         show_progress: bool | None = None) -> np.ndarray:
        """Encode documents as ``title + " " + text`` (or plain strings)."""
        texts = [d.contents if isinstance(d, Document) else d for d in docs]
        texts = _check_texts(texts, "documents")
        return self._encode(texts, "document", batch_size, show_progress)

    # ------------------------------------------------------------------ adapters
    def add_lora(self, settings: LoraSettings | None = None, name: str = "default") -> "BiEncoder":
        """Add a fresh, trainable LoRA adapter and make it the active one."""
        settings = settings or LoraSettings()
        return super().add_lora(settings, name, side=settings.side)

    def load_adapter(self, path: str | os.PathLike, name: str = "default", side: str | None = None,
                     info: dict | None = None) -> None:
        """Load a peft LoRA adapter folder (``adapter_config.json`` + weights) under ``name``; ``side`` says
        whether it adapts queries only (``"query"``) or both sides (default)."""
        if side is not None and info is not None and info.get("side") != side:
            raise ValueError(f"side {side!r} contradicts the adapter's recorded side {info.get('side')!r}")
        super().load_adapter(path, name, info=info, side=side or "both")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = False, extra_json: dict[str, object] | None = None) -> Path:
        """Write ``retrieval_config.json`` and, with adapters, peft's own files (default at the top,
        other adapters in sub-folders). A merged encoder writes a full sentence-transformers model
        and no adapter files. ``extra_json`` (file name -> data) is written beside them and checksummed too."""
        path = Path(path)
        with self.lock, atomic_dir(path, overwrite=overwrite) as tmp:
            config = {
                "kind": "bi-encoder",
                "base_model": self.base_model,
                "pooling": _pooling(self.st),
                "max_length": self.max_length,
                "dim": self.dim,
                "adapters": self.adapters,
                "active": self.active_adapter,
                "merged": self.is_merged,
                "library_version": library_version(),
            }
            if self.is_merged:
                self.st.save(str(tmp / "model"))
                if self._doc_model is not None:
                    self._doc_model.save(str(tmp / "document_model"))
            else:
                self.save_adapters(tmp)
            write_model_config(tmp, config, extra_json)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None, batch_size: int = 64, verify: bool = True,
             require_checksums: bool = False) -> "BiEncoder":
        """A saved encoder; its files are checked against the checksums recorded when it was saved (``verify``)."""
        path = Path(path)
        config = read_model_config(path, "bi-encoder folder (write one with BiEncoder.save)", verify, require_checksums)
        if config.get("kind") != "bi-encoder":
            raise ValueError(f"{path}: {CONFIG_NAME} describes a {config.get('kind')!r}, not a bi-encoder")
        if config.get("merged"):
            from sentence_transformers import SentenceTransformer

            enc = cls(path / "model", max_length=config["max_length"], device=device, batch_size=batch_size)
            enc.base_model = config["base_model"]
            enc.restore_adapters(path, config)
            if (path / "document_model").is_dir():
                enc._doc_model = SentenceTransformer(str(path / "document_model"), device=enc.device)
                enc._doc_model.max_seq_length = config["max_length"]
            return enc
        enc = cls(config["base_model"], max_length=config["max_length"], device=device, batch_size=batch_size)
        enc.restore_adapters(path, config)
        return enc


def _pooling(st) -> str:
    for module in st:
        mode = getattr(module, "pooling_mode", None)
        if mode:
            return str(mode)
        cfg = getattr(module, "get_config_dict", None)
        if cfg and "pooling_mode" in (d := cfg()):
            return str(d["pooling_mode"])
    return "unknown"


def _check_texts(texts, what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"encode_{what} takes a list of strings, not one string: wrap it in a list")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{what}[{bad}] is {type(texts[bad]).__name__}, expected str")
    return texts
