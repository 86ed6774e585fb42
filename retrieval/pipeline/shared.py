"""Shared base models with one LoRA adapter per domain, chosen per call.

A search service holds several pipelines (domains) that share base models: one bi-encoder and one
cross-encoder per base model stay in memory, and each domain's adapters are loaded into them under the
domain's own name. ``SharedModels.encoder`` / ``.reranker`` return *views*: objects with the encoder's or
reranker's interface that take the shared model's lock, switch to their adapter, and run, so two requests
for different domains never see each other's adapter. Switching is peft's ``set_adapter`` (no weights move).
Both model kinds host their adapters the same way (``retrieval.lora.AdapterHost``), so nothing here depends
on which kind it holds.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from encoders.bi_encoder import BiEncoder
from rerankers.cross_encoder import CrossEncoderReranker

from ..lora.host import read_model_config


class SharedModels:
    """Base models loaded once and shared by every pipeline loaded through it.

    >>> models = SharedModels()
    >>> pipeline, corpus, config = load_pipeline("domains/legal", models=models, adapter_prefix="legal")
    """

    def __init__(self, device: str | None = None):
        self.device = device
        self._models: dict[tuple, object] = {}  # (kind, base model, settings that change what it computes) -> model
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        counts = {k: sum(1 for key in self._models if key[0] == k) for k in ("encoder", "reranker")}
        return f"SharedModels({counts['encoder']} bi-encoder(s), {counts['reranker']} cross-encoder(s))"

    @property
    def base_models(self) -> dict[str, list[str]]:
        """The base models in memory and the adapters loaded into each: ``kind:base``, numbered ``kind:base #2`` where
        one base is in memory more than once (other lengths, or rerankers with and without a pooler of their own)."""
        out: dict[str, list[str]] = {}
        held: Counter[str] = Counter()
        for key, model in self._models.items():
            label = f"{key[0]}:{key[1]}"
            held[label] += 1
            out[label if held[label] == 1 else f"{label} #{held[label]}"] = sorted(model.adapter_names)
        return out

    def _shared(self, key: tuple, make):
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = make()
        return model

    def _load_into(self, model, config: dict, folder: Path, adapter_name: str):
        """Load the saved model's active adapter into the shared ``model`` under ``adapter_name``: (adapter
        name in the shared model or None, its name in the saved folder or None)."""
        active = config.get("active")
        if active is None:
            return None, None
        with model.lock:
            if adapter_name in model.adapter_names:
                raise ValueError(f"an adapter named {adapter_name!r} is loaded already; unload it first")
            model.load_adapter(folder if active == "default" else folder / active, name=adapter_name,
                               info=config["adapters"][active])
        return adapter_name, active

    def encoder(self, folder: str | os.PathLike, adapter_name: str) -> "EncoderView | BiEncoder":
        """A view of the saved encoder in ``folder`` over the shared base model, its active adapter loaded
        under ``adapter_name``. A merged encoder, or one that runs an OpenVINO export (the adapter is folded into
        it), cannot share weights: it is loaded on its own."""
        folder = Path(folder)
        config = read_model_config(folder, "bi-encoder folder", verify=False)  # its files: checked with the pipeline's
        if config.get("merged") or config.get("inference"):  # its weights are its own (merged, or an export with
            return BiEncoder.load(folder, device=self.device, verify=False)  # the adapter folded in): not shared
        base, length = config["base_model"], int(config["max_length"])
        model = self._shared(("encoder", base, length),
                             lambda: BiEncoder(base, max_length=length, device=self.device))
        return EncoderView(model, *self._load_into(model, config, folder, adapter_name))

    def reranker(self, folder: str | os.PathLike, adapter_name: str) -> "RerankerView | CrossEncoderReranker":
        """Likewise for a saved cross-encoder."""
        folder = Path(folder)
        config = read_model_config(folder, "reranker folder", verify=False)
        if config.get("merged") or config.get("inference"):
            return CrossEncoderReranker.load(folder, device=self.device, verify=False)
        base, length = config["base_model"], int(config["max_length"])
        labels, precision = config.get("num_labels"), config.get("precision", "auto")
        passage, keep = config.get("passage", "first"), config.get("keep_layers")
        adapter = config.get("adapters", {}).get(config.get("active"), {})
        # peft cannot both wrap a pooler whole (an adapter's own, new_head_pooler="identity") and put LoRA on it
        owns_pooler = "pooler" in adapter.get("lora", {}).get("modules_to_save", ())
        model = self._shared(("reranker", base, length, labels, precision, passage, keep, owns_pooler),
                             lambda: CrossEncoderReranker(base, max_length=length, device=self.device,
                                                          precision=precision, num_labels=labels, passage=passage,
                                                          keep_layers=keep))
        return RerankerView(model, *self._load_into(model, config, folder, adapter_name))

    def unload(self, adapter_name: str) -> None:
        """Remove the adapters loaded under ``adapter_name`` from every shared model."""
        for model in self._models.values():
            with model.lock:
                names = model.adapter_names
                if adapter_name not in names:
                    continue
                if len(names) == 1:
                    # the last adapter stays, unused: peft cannot load another one after its last is deleted
                    # (modules_to_save), and a reloaded domain gets fresh adapter names anyway
                    continue
                model.unload_adapter(adapter_name)


class _View:
    """Run a shared model with one adapter (or none) active, under the model's lock."""

    def __init__(self, model, adapter: str | None, saved_name: str | None):
        self.model, self.adapter, self.saved_name = model, adapter, saved_name
        self._fingerprints: dict[str, str] = {}

    @property
    def active_adapter(self) -> str | None:
        """The adapter's name in the saved folder (the shared model knows it under another)."""
        return self.saved_name

    def _activate(self) -> None:  # the caller holds model.lock
        if self.adapter is None:
            self.model.disable_adapters()
        elif self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter)

    def _run(self, method: str, *args, **kwargs):
        with self.model.lock:
            self._activate()
            return getattr(self.model, method)(*args, **kwargs)

    def _fingerprint(self, key: str, *args) -> str:
        """The model's fingerprint as the saved model reports it: with the adapter's saved name, not the shared one."""
        if key not in self._fingerprints:
            fp = self._run("fingerprint", *args)
            if self.adapter is not None and self.adapter != self.saved_name:
                fp = fp.replace(f"+{self.adapter}:", f"+{self.saved_name}:")
            self._fingerprints[key] = fp
        return self._fingerprints[key]

    def __getattr__(self, name):  # facts of the base model: device, base_model, max_length, dim ...
        return getattr(self.model, name)


class EncoderView(_View):
    """A ``BiEncoder`` as one domain sees it: the shared base with this domain's adapter."""

    def encode_queries(self, texts, batch_size: int | None = None, show_progress: bool | None = None) -> np.ndarray:
        return self._run("encode_queries", texts, batch_size=batch_size, show_progress=show_progress)

    def encode_documents(self, docs, batch_size: int | None = None, show_progress: bool | None = None) -> np.ndarray:
        return self._run("encode_documents", docs, batch_size=batch_size, show_progress=show_progress)

    def fingerprint(self, side: str = "document") -> str:
        return self._fingerprint(side, side)


class RerankerView(_View):
    """A ``CrossEncoderReranker`` as one domain sees it: the shared base with this domain's adapter."""

    def score(self, queries, docs, batch_size: int | None = None, show_progress: bool | None = None) -> np.ndarray:
        return self._run("score", queries, docs, batch_size=batch_size, show_progress=show_progress)

    def __call__(self, queries, docs) -> np.ndarray:
        return self.score(queries, docs)

    def fingerprint(self) -> str:
        return self._fingerprint("pairs")
