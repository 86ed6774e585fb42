"""A cross-encoder reranker over a transformers sequence-classification model, adapted with LoRA.

Any cross-encoder checkpoint loads (a Hugging Face id or folder whose config names a
``...ForSequenceClassification`` architecture). Any other encoder checkpoint — by default the packaged
all-MiniLM-L6-v2 — gets a *new* one-logit scoring head, initialised from a fixed seed so the base model is
the same in every process; training a LoRA adapter (``rerankers.train``) is what makes it a reranker.

LoRA adapters are peft's own, with the scoring head in ``modules_to_save`` so the trained head is saved and
loaded with the adapter. A saved folder holds peft's files (the default adapter at the top, other named
adapters in sub-folders) beside our ``retrieval_config.json``, which records the base model, its weight
fingerprint, the head's shape and the adapters; ``merged()`` folds the active adapter into the weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from retrieval.cpu import fast_bf16
from retrieval.lora.base import PACKAGED_ID, default_device, resolve_model
from retrieval.lora.host import (CONFIG_NAME, AdapterHost, AdapterMismatch, QualityRefused, read_model_config,
                                 write_model_config)
from retrieval.lora.openvino import batches_by_length, export
from retrieval.lora.settings import LoraSettings
from retrieval.util import atomic_dir, library_version, read_json, write_json

from .passages import check_passage, read

PRECISIONS = ("auto", "float32", "bfloat16")
HEAD_SEED = 0
POOLER_INITS = ("identity", "base")


@dataclass
class RerankLoraSettings(LoraSettings):
    """LoRA for the cross-encoder: r=32 (alpha 64) on every linear layer of the encoder, and the scoring head trained
    in full and saved with the adapter (peft ``modules_to_save``). r=8 before: r=32 gave +0.0066 nDCG@10 fused out of
    fold on seeds 4-6's held-out training queries pooled, for 1.1x the training (a rule stated before; README routes).

    ``new_head_pooler`` matters only for a *new* head on a plain encoder with a BERT-style pooler (the packaged
    MiniLM). ``"base"`` (the default) keeps the checkpoint's pooler, with LoRA on it like every other linear
    layer. ``"identity"`` gives the adapter a pooler of its own, trained in full and saved with it, that starts
    as the identity (pooled = tanh of the [CLS] vector): the packaged MiniLM's pooler was never trained (weights
    ~N(0, 0.009), bias 0) and squeezes every pair to nearly the same features, which holds the listwise loss at
    log(group size) for the first few dozen steps. On SciFact the identity pooler left that plateau sooner
    (validation nDCG@10 after epochs 1 and 2: 0.670 / 0.738 against 0.636 / 0.711) but the fused pipeline on the
    held-out training queries lost 0.019 (0.7847 vs 0.8037), so it is not the default (README, "Routes tried for
    the third stage"). The base weights are never changed either way, so adapters of both kinds load on the same
    base."""

    r: int = 32
    alpha: int = 64
    modules_to_save: tuple[str, ...] = ("classifier",)
    new_head_pooler: str = "base"

    def __post_init__(self):
        super().__post_init__()
        self.modules_to_save = tuple(self.modules_to_save)
        if self.new_head_pooler not in POOLER_INITS:
            raise ValueError(f"new_head_pooler must be one of {POOLER_INITS}, got {self.new_head_pooler!r}")

    def _peft_kwargs(self) -> dict:
        return {**super()._peft_kwargs(), "modules_to_save": list(self.modules_to_save)}

    def to_dict(self) -> dict:
        return {**super().to_dict(), "modules_to_save": list(self.modules_to_save)}


class RerankerMismatch(AdapterMismatch):
    """An adapter or head that does not fit this reranker's base model."""


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bfloat16 autocast where the hardware computes bf16 fast (recent CUDA GPUs, CPUs with AMX granted to
    this process: ``retrieval.cpu``), float32 elsewhere."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device == "cpu":
        return "bfloat16" if fast_bf16() else "float32"
    return "float32"


@contextlib.contextmanager
def _quiet_transformers():
    """Loading a backbone into a classification model reports the new head as missing weights; we say so ourselves."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _positions(config, tokenizer) -> int:
    """The most tokens (query + passage) a model reads: its position embeddings, or its tokenizer's limit if lower."""
    limit = int(tokenizer.model_max_length) if tokenizer.model_max_length < 10**6 else 512
    return min(int(getattr(config, "max_position_embeddings", 512) or 512), limit)


def backbone_limits(model: str | os.PathLike | None = None) -> tuple[int, int]:
    """(transformer layers, most tokens read) of ``model`` (None: the packaged MiniLM), from its config and
    tokenizer: no weights load."""
    from transformers import AutoConfig, AutoTokenizer

    path = resolve_model(model)
    config = AutoConfig.from_pretrained(path)
    return int(config.num_hidden_layers), _positions(config, AutoTokenizer.from_pretrained(path))


def _up_to(value: int | None, most: int, name: str, what: str) -> int:
    """``value`` (None: ``most``), refused unless an integer from 1 to ``most`` (``what``: of what, in words)."""
    if value is None:
        return most
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ValueError(f"{name} must be an integer from 1 to {what}, got {value!r}")
    return value


def check_max_length(max_length: int | None, positions: int, model, name: str = "max_length") -> int:
    """The tokens (query + passage) a reranker reads: ``max_length`` (None: all ``positions`` the model has), refused
    where the model has fewer positions (it was cut to them without a word)."""
    return _up_to(max_length, positions, name, f"the {positions} tokens (query + passage) {model} reads")


def check_keep_layers(keep_layers: int | None, total: int, model, name: str = "keep_layers") -> int:
    """The transformer layers a reranker keeps: ``keep_layers`` of its backbone's ``total`` (None: all)."""
    return _up_to(keep_layers, total, name, f"{model}'s {total} transformer layers")


def _is_cross_encoder(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


class CrossEncoderReranker(AdapterHost):
    """Score (query, document) pairs; add, save, load, switch, disable and merge LoRA adapters
    (``retrieval.lora.AdapterHost``).

    >>> ce = CrossEncoderReranker(max_length=256)            # packaged MiniLM + a new head (train it first)
    >>> ce.add_lora(RerankLoraSettings())
    >>> ce.score(["what causes scurvy"], ["Scurvy is caused by a lack of vitamin C."])
    """

    def __init__(self, model: str | os.PathLike | None = None, max_length: int | None = None,
                 device: str | None = None, batch_size: int = 32, precision: str = "auto",
                 num_labels: int | None = None, passage: str = "first", keep_layers: int | None = None):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.device = device or default_device()
        self.precision = resolve_precision(precision, self.device)
        self.precision_asked = precision  # "auto" is resolved again where a saved reranker is loaded
        path = resolve_model(model)
        config = AutoConfig.from_pretrained(path)
        self.new_head = not _is_cross_encoder(config)
        labels = num_labels or (config.num_labels if not self.new_head else 1)
        kw = {"num_labels": labels}
        if keep_layers is not None:  # the bottom layers only: a pair costs keep_layers / all of a full pass
            kw["num_hidden_layers"] = check_keep_layers(keep_layers, int(config.num_hidden_layers), path)
        with _quiet_transformers():
            self.model = AutoModelForSequenceClassification.from_pretrained(path, **kw)
        self.keep_layers = keep_layers
        if self.new_head:  # the same base in every process: a seeded head, not transformers' global RNG
            head = self._head()
            gen = torch.Generator().manual_seed(HEAD_SEED)
            with torch.no_grad():
                head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * config.initializer_range)
                if head.bias is not None:
                    head.bias.zero_()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_positions = _positions(config, self.tokenizer)  # the most it can read
        self.max_length = check_max_length(max_length, self.max_positions, path)
        self.passage = check_passage(passage)  # which part of a longer document it reads (rerankers.passages)
        self.model.to(self.device).eval()
        _align(self.model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.batch_size = batch_size
        self.base_model = str(model) if model is not None else PACKAGED_ID
        self.num_labels = labels
        self._init_adapters()

    # ------------------------------------------------------------------ the adapter host's hooks
    @property
    def module(self):
        return self.model

    def _replace_module(self, module) -> None:
        self.model = module

    def _copy_for_merge(self) -> "CrossEncoderReranker":
        clone = copy.copy(self)
        clone.model = copy.deepcopy(self.model)
        return clone

    def _after_merge(self, source: "CrossEncoderReranker") -> None:
        self.model.eval()
        _align(self.model)

    def _check_adapter(self, path: Path, config: dict) -> None:
        """A clear error for an adapter of another base model, another head shape, or missing modules."""
        weights = path / "adapter_model.safetensors"
        if weights.is_file():
            from safetensors import safe_open

            with safe_open(str(weights), "pt") as f:
                for key in f.keys():
                    if key.endswith(("classifier.weight", "score.weight", "out_proj.weight")):
                        shape = tuple(f.get_slice(key).get_shape())
                        if shape != self.head_shape:
                            raise RerankerMismatch(
                                f"{path}: the adapter's scoring head has shape {shape}, this model's head is "
                                f"{self.head_shape} (num_labels {self.num_labels}); it belongs to another model")
        ours = path / CONFIG_NAME
        if not ours.is_file() and (path.parent / CONFIG_NAME).is_file():
            ours = path.parent / CONFIG_NAME  # a named adapter in a sub-folder of a saved reranker
        if ours.is_file():
            saved = read_json(ours, "reranker config")
            fp = saved.get("base_fingerprint")
            if saved.get("kind") not in (None, "cross-encoder"):
                raise RerankerMismatch(f"{path}: it holds a {saved.get('kind')!r} adapter, not a cross-encoder's")
            if fp and fp != self.base_fingerprint():
                raise RerankerMismatch(
                    f"{path}: the adapter was trained on base model {saved.get('base_model')!r} (weights {fp}); "
                    f"this reranker's base is {self.base_model!r} (weights {self.base_fingerprint()})")
        try:
            super()._check_adapter(path, config)
        except AdapterMismatch as e:
            raise RerankerMismatch(str(e)) from None

    # ------------------------------------------------------------------ facts
    def _head(self):
        base = self.base_module()
        for name in ("classifier", "score"):
            head = getattr(base, name, None)
            if head is not None:
                head = getattr(head, "original_module", head)  # peft's modules_to_save wrapper
                return head.out_proj if hasattr(head, "out_proj") else head  # RoBERTa-style heads
        raise ValueError(f"{type(base).__name__} has no 'classifier' or 'score' head")

    @property
    def head_shape(self) -> tuple[int, ...]:
        return tuple(self._head().weight.shape)

    def fingerprint(self) -> str:
        """What scores pairs: base weights plus the active adapter (and the OpenVINO export that runs them)."""
        return self.adapter_fingerprint(self.active_adapter) + self._export_suffix("pairs")

    # ------------------------------------------------------------------ scoring
    def _autocast(self):
        import torch

        if self.precision == "bfloat16":
            return torch.autocast(device_type="cuda" if self.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _features(self, queries: Sequence[str], docs: Sequence[str]):
        features = self.tokenizer(list(queries), list(docs), truncation="longest_first", max_length=self.max_length,
                                  padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in features.items()}

    def _read(self, queries: Sequence[str], docs: Sequence[str]) -> list[str]:
        """The documents as this reranker reads them (``passage``: all of them up to ``max_length``, or the
        sentences that speak to each query)."""
        return read(self.passage, queries, docs, self.max_length, self.tokenizer)

    def logits(self, queries: Sequence[str], docs: Sequence[str]):
        """Scores as a torch tensor *with* gradients (for training); the active adapter applies."""
        return self._logits(queries, self._read(queries, docs))

    def _logits(self, queries: Sequence[str], docs: Sequence[str]):  # docs as read already
        features = self._features(queries, docs)
        with self._autocast():
            out = self.model(**features).logits.float()
        return _score_of(out)

    def _feeds(self, queries: Sequence[str], docs: Sequence[str], indices: Sequence[int]) -> dict:
        return dict(self.tokenizer([queries[i] for i in indices], [docs[i] for i in indices], truncation="longest_first",
                                   max_length=self.max_length, padding=True, return_tensors="np"))

    def score(self, queries: Sequence[str], docs: Sequence[str], batch_size: int | None = None,
              show_progress: bool | None = None) -> np.ndarray:
        """One relevance score per (queries[i], docs[i]) pair, as float32. Pairs are batched by length."""
        import torch

        queries, docs = _check_pairs(queries, docs)
        n = len(queries)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        docs = self._read(queries, docs)
        model = self._exports.get("pairs")
        bs = batch_size or self.batch_size
        if model is not None:  # an export splits even a few pairs over the cores
            bs = model.batch_size(n, bs)
        show = n >= 2000 if show_progress is None else show_progress
        out = np.empty(n, dtype=np.float32)
        batches = list(batches_by_length(n, [len(queries[i]) + len(docs[i]) for i in range(n)], bs))
        if model is not None:
            with tqdm(total=len(batches), desc="rerank", unit="batch", disable=not show, leave=False) as bar:
                def put(i: int, logits: np.ndarray) -> None:
                    out[batches[i]] = _score_of(logits)
                    bar.update()

                model.run_batches((self._feeds(queries, docs, idx) for idx in batches), put)
            return out
        with self.lock, torch.inference_mode(), self.base_only(self.active_adapter is None):
            training = self.model.training
            self.model.eval()  # no dropout when scoring, even between training steps
            try:
                for idx in tqdm(batches, desc="rerank", unit="batch", disable=not show, leave=False):
                    out[idx] = self._logits([queries[i] for i in idx], [docs[i] for i in idx]).cpu().numpy()
            finally:
                self.model.train(training)
        return out

    def __call__(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        return self.score(queries, docs)

    # ------------------------------------------------------------------ adapters
    def add_lora(self, settings: RerankLoraSettings | None = None, name: str = "default") -> "CrossEncoderReranker":
        """Add a fresh, trainable LoRA adapter (head in ``modules_to_save``) and make it the active one. On a new
        head with ``settings.new_head_pooler == "identity"`` the adapter also gets its own pooler, set to the
        identity (see ``RerankLoraSettings``)."""
        import torch

        settings = settings or RerankLoraSettings()
        pooler = self._pooler_owner() if self.new_head and settings.new_head_pooler == "identity" else None
        if pooler is not None and "pooler" not in settings.modules_to_save:
            settings = replace(settings, modules_to_save=(*settings.modules_to_save, "pooler"))
        own = "pooler" in settings.modules_to_save
        other = [n for n, info in self._adapters.items() if ("pooler" in info["lora"].get("modules_to_save", ())) != own]
        if other:  # peft cannot both wrap the pooler whole and inject LoRA into it
            raise ValueError(f"adapter(s) {other} {'have LoRA on' if own else 'own'} the pooler and this one would "
                             f"{'own it' if own else 'put LoRA on it'}; adapters on one reranker must share "
                             f"new_head_pooler: pass new_head_pooler={'base' if own else 'identity'!r} or use "
                             f"another CrossEncoderReranker")
        super().add_lora(settings, name, base_fingerprint=self.base_fingerprint())
        if pooler is not None:
            dense = pooler.pooler.modules_to_save[name].dense  # the adapter's copy; the base pooler is untouched
            with torch.no_grad():
                dense.weight.copy_(torch.eye(dense.weight.shape[0], dtype=dense.weight.dtype))
                if dense.bias is not None:
                    dense.bias.zero_()
        return self

    def _pooler_owner(self):
        """The encoder module whose ``pooler.dense`` is a square layer (BERT-style), or None."""
        base = self.base_module()
        owner = getattr(base, getattr(base, "base_model_prefix", ""), None)
        dense = getattr(getattr(owner, "pooler", None), "dense", None)
        if dense is None or getattr(dense, "weight", None) is None or dense.weight.shape[0] != dense.weight.shape[1]:
            return None
        return owner

    def load_adapter(self, path: str | os.PathLike, name: str = "default", info: dict | None = None) -> None:
        """Load a peft LoRA adapter folder under ``name``, refusing one made for another base model or head."""
        super().load_adapter(path, name, info=info, base_fingerprint=self.base_fingerprint())

    # ------------------------------------------------------------------ OpenVINO inference
    def use_openvino(self, precision: str, queries: Sequence[str], docs: Sequence[str], cache_dir=None,
                     min_spearman: float | None = 0.98, batch_size: int | None = None, int8_scope: str = "auto") -> dict:
        """Score pairs through OpenVINO at ``precision`` (``fp32``, ``bf16``, ``int8``) from now on.

        ``queries[i]``, ``docs[i]``: pairs like those the reranker scores (e.g. queries and their first-stage
        candidates from the corpus): every other pair calibrates the int8 export, the others check it against
        the torch model (Spearman correlation of the scores); below ``min_spearman`` the export is refused
        (``QualityRefused``) and the reranker stays on torch. ``int8_scope``: which matrix products an int8 export
        quantizes (``retrieval.lora.openvino``: ``auto`` keeps the output projections out of int8 only where bf16
        is fast here). Returns the report (kept and saved)."""
        import torch
        from scipy.stats import spearmanr

        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"OpenVINO precision must be fp32, bf16 or int8, got {precision!r}")
        queries, docs = _check_pairs(queries, docs)
        cal = list(range(0, len(queries), 2))
        check = list(range(1, len(queries), 2))
        if len(cal) < 2 or len(check) < 3:
            raise ValueError(f"use_openvino needs at least 6 pairs to calibrate and check, got {len(queries)}")
        with self.lock:
            self._drop_exports()
            cq = [queries[i] for i in cal]
            cd = self._read(cq, [docs[i] for i in cal])
            made = {"kind": "cross-encoder", "computes": self.fingerprint(), "max_length": self.max_length,
                    "calibration": hashlib.sha256("\x00".join(cq + cd).encode()).hexdigest()[:16]}
            module = _logits_module(self._merged_copy())
            model = export(module, self._feeds(cq, cd, [0, 1]), precision, made,
                           lambda: (self._feeds(cq, cd, idx) for idx in
                                    batches_by_length(len(cq), [len(a) + len(b) for a, b in zip(cq, cd)], 10)),
                           cache_dir, int8_scope=int8_scope)
            kq, kd = [queries[i] for i in check], [docs[i] for i in check]
            with torch.inference_mode():
                expected = self.score(kq, kd, batch_size, False)
            self._exports = {"pairs": model}
            try:
                got = self.score(kq, kd, batch_size, False)
            finally:
                self._exports = {}
            rho = float(spearmanr(expected, got).statistic)
            report = {"precision": precision, "min_spearman": min_spearman, **(
                {"int8_scope": model.int8_scope} if precision == "int8" else {}), "pairs": {
                "spearman": rho, "max_abs_difference": float(np.abs(expected - got).max()), "checked_pairs": len(check),
                "calibration_pairs": len(cal), "torch_precision": self.precision}}
            if min_spearman is not None and rho < min_spearman:
                self.export_report = {**report, "refused": True}
                raise QualityRefused(f"the {precision} export's scores have a Spearman correlation of {rho:.4f} with "
                                     f"the torch model's, under {min_spearman}: refused (use another precision, or "
                                     f"min_spearman=None to take it anyway)")
            self._exports, self.export_report = {"pairs": model}, report
            return report

    def _merged_copy(self):
        """A plain torch copy of the classification model with the active adapter (and its head) merged in."""
        model = copy.deepcopy(self.model)
        if self.is_peft and not self.is_merged:
            if self.active_adapter is None:
                return model.unload()
            for other in self.adapter_names:
                if other != self.active_adapter:
                    model.delete_adapter(other)
            return model.merge_and_unload()
        return model

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict:
        return {
            "kind": "cross-encoder",
            "base_model": self.base_model,
            "base_fingerprint": self.base_fingerprint() if not self.is_merged else None,
            "new_head": self.new_head,
            "head_seed": HEAD_SEED if self.new_head else None,
            "num_labels": self.num_labels,
            "head_shape": list(self.head_shape),
            "max_length": self.max_length,
            **({"passage": self.passage} if self.passage != "first" else {}),  # what it reads of longer documents
            **({"keep_layers": self.keep_layers} if self.keep_layers is not None else {}),  # of the base model's
            "precision": self.precision,
            **({"precision_asked": "auto"} if self.precision_asked == "auto" else {}),
            "adapters": self.adapters,
            "active": self.active_adapter,
            "merged": self.is_merged,
            "library_version": library_version(),
        }

    def _save_config(self, folder: Path) -> dict:
        return {**self._config(), "inference": self._save_exports(folder)}

    def save(self, path: str | os.PathLike, overwrite: bool = False, extra_json: dict[str, object] | None = None) -> Path:
        """Write ``retrieval_config.json`` and peft's adapter files (head included), or, merged, a full
        transformers model + tokenizer in ``model/`` that any cross-encoder loader reads. ``extra_json`` (file name
        -> data) is written beside them and checksummed too."""
        path = Path(path)
        with self.lock, atomic_dir(path, overwrite=overwrite) as tmp:
            if self.is_merged:
                self.model.save_pretrained(str(tmp / "model"))
                self.tokenizer.save_pretrained(str(tmp / "model"))
                self._sentence_transformers_files(tmp, "model")
            else:
                self.save_adapters(tmp)
                if self.active_adapter == "default":  # the adapter at the top is the one a plain loader applies
                    self._sentence_transformers_files(tmp, "")
            write_model_config(tmp, self._save_config(tmp), extra_json)
        return path

    def _sentence_transformers_files(self, root: Path, module: str) -> None:
        """What sentence-transformers' ``CrossEncoder(root)`` reads to open this folder by itself, with no code of
        this library: the tokenizer and a module list whose one module is the transformers model in ``module``
        (for an unmerged folder: peft's files, which transformers applies to the base model they name), one
        logit, scores as raw logits (``activation_fn`` identity), so ``predict`` gives ``score``'s numbers."""
        folder = root / module
        if module == "":
            self.tokenizer.save_pretrained(str(folder))
        write_json(root / "modules.json", [{"idx": 0, "name": "0", "path": module,
                                            "type": "sentence_transformers.base.modules.transformer.Transformer"}])
        write_json(root / "config_sentence_transformers.json", {
            "model_type": "CrossEncoder", "activation_fn": "torch.nn.modules.linear.Identity", "prompts": {},
            "default_prompt_name": None})
        write_json(folder / "sentence_bert_config.json", {
            "transformer_task": "sequence-classification", "config_kwargs": {
                "num_labels": self.num_labels, **({"num_hidden_layers": self.keep_layers} if self.keep_layers else {})},
            "max_seq_length": self.max_length,
            "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
            "module_output_name": "scores"})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None, batch_size: int = 32,
             precision: str | None = None, verify: bool = True, require_checksums: bool = False) -> "CrossEncoderReranker":
        """A saved reranker; its files are checked against the checksums recorded when it was saved (``verify``)."""
        path = Path(path)
        config = read_model_config(path, "reranker folder (write one with CrossEncoderReranker.save)", verify,
                                   require_checksums)
        if config.get("kind") != "cross-encoder":
            raise ValueError(f"{path}: {CONFIG_NAME} describes a {config.get('kind')!r}, not a cross-encoder")
        # "auto" resolves on this machine: bf16 where it is fast here, not where the reranker was saved
        precision = precision or config.get("precision_asked") or config.get("precision", "auto")
        if config.get("merged"):
            ce = cls(path / "model", max_length=config["max_length"], device=device, batch_size=batch_size,
                     precision=precision, passage=config.get("passage", "first"), keep_layers=config.get("keep_layers"))
            ce.base_model, ce.new_head = config["base_model"], config.get("new_head", False)
            ce.restore_adapters(path, config)
            ce._load_exports(path, config, verify)
            return ce
        ce = cls(config["base_model"], max_length=config["max_length"], device=device, batch_size=batch_size,
                 precision=precision, num_labels=config.get("num_labels"), passage=config.get("passage", "first"),
                 keep_layers=config.get("keep_layers"))
        if config.get("head_shape") and tuple(config["head_shape"]) != ce.head_shape:
            raise RerankerMismatch(f"{path}: saved with a head of shape {tuple(config['head_shape'])}, but "
                                   f"{config['base_model']} loads with {ce.head_shape}")
        ce.restore_adapters(path, config)
        ce._load_exports(path, config, verify)
        return ce


def _score_of(logits):
    """One relevance score per row of a model's logits (torch or numpy): the logit, or positive minus negative."""
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


def _logits_module(model):
    """What an export computes (a torch module over tokenizer output): the classification logits."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits.float()

    return Logits()


def _align(model) -> None:
    """Give every weight its own contiguous, 64-byte aligned memory. Weights read from a safetensors file can
    sit at odd offsets, and BLAS then takes another code path whose float sums differ in the last bit: with
    this, a model scores exactly the same in memory and after save -> load."""
    for param in model.parameters():
        if not param.data.is_contiguous() or param.data.data_ptr() % 64:
            param.data = param.data.contiguous().clone()


def _check_pairs(queries, docs) -> tuple[list[str], list[str]]:
    if isinstance(queries, str) or isinstance(docs, str):
        raise TypeError("score takes two lists of strings (queries[i] is scored against docs[i]), not single strings")
    queries, docs = list(queries), list(docs)
    if len(queries) != len(docs):
        raise ValueError(f"score needs one query per document: got {len(queries)} queries and {len(docs)} documents")
    for what, texts in (("queries", queries), ("docs", docs)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"{what}[{bad}] is {type(texts[bad]).__name__}, expected str")
    return queries, docs
