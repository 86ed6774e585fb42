"""Shared base models with one LoRA adapter per domain, chosen per call.

A search service holds several pipelines (domains) that share base models: one bi-encoder and one
cross-encoder per base model stay in memory, and each domain's adapters are loaded into them under the
domain's own name. ``SharedModels.encoder`` / ``.reranker`` return *views*: objects with the encoder's or
reranker's interface that take the shared model's lock, switch to their adapter, and run, so two requests
for different domains never see each other's adapter. Switching is peft's ``set_adapter`` (no weights move).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .util import read_json


class SharedModels:
    """Base models loaded once and shared by every pipeline loaded through it.

    >>> models = SharedModels()
    >>> pipeline, corpus, config = load_pipeline("domains/legal", models=models, adapter_prefix="legal")
    """

    def __init__(self, device: str | None = None):
        self.device = device
        self._encoders: dict[tuple, object] = {}
        self._rerankers: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SharedModels({len(self._encoders)} bi-encoder(s), {len(self._rerankers)} cross-encoder(s))"

    @property
    def base_models(self) -> dict[str, list[str]]:
        """The base models in memory and the adapters loaded into each."""
        out = {}
        for kind, models in (("encoder", self._encoders), ("reranker", self._rerankers)):
            for key, model in models.items():
                out[f"{kind}:{key[0]}"] = sorted(_adapter_names(model))
        return out

    # ------------------------------------------------------------------ bi-encoders
    def encoder(self, folder: str | os.PathLike, adapter_name: str) -> "EncoderView":
        """A view of the saved encoder in ``folder`` over the shared base model, its active adapter loaded
        under ``adapter_name``. A merged encoder cannot share weights: it is loaded on its own."""
        from encoders.bi_encoder import CONFIG_NAME, BiEncoder

        folder = Path(folder)
        config = read_json(folder / CONFIG_NAME, "bi-encoder config")
        if config.get("merged"):
            return BiEncoder.load(folder, device=self.device)  # a model of its own: nothing to switch
        key = (config["base_model"], int(config["max_length"]))
        with self._lock:
            model = self._encoders.get(key)
            if model is None:
                model = self._encoders[key] = BiEncoder(config["base_model"], max_length=key[1], device=self.device)
        active = config.get("active")
        if active is None:
            return EncoderView(model, None, None)
        info = config["adapters"][active]
        with model._lock:
            if adapter_name in model.adapters:
                raise ValueError(f"an encoder adapter named {adapter_name!r} is loaded already; unload it first")
            model.load_adapter(folder if active == "default" else folder / active, name=adapter_name, side=info["side"])
            model._state.adapters[adapter_name] = info
        return EncoderView(model, adapter_name, active)

    # ------------------------------------------------------------------ cross-encoders
    def reranker(self, folder: str | os.PathLike, adapter_name: str) -> "RerankerView":
        from rerankers.cross_encoder import CONFIG_NAME, CrossEncoderReranker

        folder = Path(folder)
        config = read_json(folder / CONFIG_NAME, "reranker config")
        if config.get("merged"):
            return CrossEncoderReranker.load(folder, device=self.device)
        key = (config["base_model"], int(config["max_length"]), config.get("num_labels"), config.get("precision", "auto"))
        with self._lock:
            model = self._rerankers.get(key)
            if model is None:
                model = self._rerankers[key] = CrossEncoderReranker(
                    config["base_model"], max_length=key[1], device=self.device, precision=key[3], num_labels=key[2])
        active = config.get("active")
        if active is None:
            return RerankerView(model, None, None)
        with model._lock:
            if adapter_name in model.adapters:
                raise ValueError(f"a reranker adapter named {adapter_name!r} is loaded already; unload it first")
            model.load_adapter(folder if active == "default" else folder / active, name=adapter_name)
            model.adapters[adapter_name] = config["adapters"][active]
        return RerankerView(model, adapter_name, active)

    def unload(self, adapter_name: str) -> None:
        """Remove the adapters loaded under ``adapter_name`` from every shared model."""
        for model in [*self._encoders.values(), *self._rerankers.values()]:
            with model._lock:
                if adapter_name not in _adapter_names(model):
                    continue
                if len(_adapter_names(model)) == 1:
                    # the last adapter stays, unused: peft cannot load another one after its last is deleted
                    # (modules_to_save), and a reloaded domain gets fresh adapter names anyway
                    continue
                peft_model = model._transformer() if hasattr(model, "_transformer") else model.model
                peft_model.delete_adapter(adapter_name)
                if hasattr(model, "_state"):
                    model._state.adapters.pop(adapter_name)
                    if model._state.active == adapter_name:
                        model._state.active = None
                else:
                    model.adapters.pop(adapter_name)
                    if model.active_adapter == adapter_name:
                        model.active_adapter = None


def _adapter_names(model) -> list[str]:
    return list(model._state.adapters) if hasattr(model, "_state") else list(model.adapters)


class _View:
    """Run a shared model with one adapter (or none) active, under the model's lock."""

    def __init__(self, model, adapter: str | None, saved_name: str | None):
        self.model, self.adapter, self.saved_name = model, adapter, saved_name
        self._fingerprints: dict[str, str] = {}

    @property
    def active_adapter(self) -> str | None:
        """The adapter's name in the saved folder (the shared model knows it under another)."""
        return self.saved_name

    def _activate(self) -> None:  # the caller holds model._lock
        if self.adapter is None:
            self.model.disable_adapters()
        elif self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter)

    def _saved(self, fingerprint: str) -> str:
        """The fingerprint as the saved model reports it: with the adapter's saved name, not the shared one."""
        if self.adapter is not None and self.adapter != self.saved_name:
            return fingerprint.replace(f"+{self.adapter}:", f"+{self.saved_name}:")
        return fingerprint

    def __getattr__(self, name):  # facts of the base model: device, base_model, max_length, dim ...
        return getattr(self.model, name)


class EncoderView(_View):
    """A ``BiEncoder`` as one domain sees it: the shared base with this domain's adapter."""

    def encode_queries(self, texts, batch_size: int | None = None, show_progress: bool | None = None) -> np.ndarray:
        with self.model._lock:
            self._activate()
            return self.model.encode_queries(texts, batch_size=batch_size, show_progress=show_progress)

    def encode_documents(self, docs, batch_size: int | None = None, show_progress: bool | None = None) -> np.ndarray:
        with self.model._lock:
            self._activate()
            return self.model.encode_documents(docs, batch_size=batch_size, show_progress=show_progress)

    def fingerprint(self, side: str = "document") -> str:
        if side not in self._fingerprints:
            with self.model._lock:
                self._activate()
                self._fingerprints[side] = self._saved(self.model.fingerprint(side))
        return self._fingerprints[side]


class RerankerView(_View):
    """A ``CrossEncoderReranker`` as one domain sees it: the shared base with this domain's adapter."""

    def score(self, queries, docs, batch_size: int | None = None, show_progress: bool | None = None) -> np.ndarray:
        with self.model._lock:
            self._activate()
            return self.model.score(queries, docs, batch_size=batch_size, show_progress=show_progress)

    def __call__(self, queries, docs) -> np.ndarray:
        return self.score(queries, docs)

    def fingerprint(self) -> str:
        if "pairs" not in self._fingerprints:
            with self.model._lock:
                self._activate()
                self._fingerprints["pairs"] = self._saved(self.model.fingerprint())
        return self._fingerprints["pairs"]
