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
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from retrieval.lora.base import PACKAGED_ID, default_device, resolve_model
from retrieval.lora.host import (CONFIG_NAME, AdapterHost, QualityRefused, read_model_config, weights_fingerprint,
                                 write_model_config)
from retrieval.lora.openvino import batches_by_length, export, export_description
from retrieval.lora.settings import LoraSettings
from retrieval.types import Document
from retrieval.util import atomic_dir, library_version, read_json, write_json

_DOCUMENT_ROUTE = "document_0_Transformer"  # the base transformer of a query-only folder's Router


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
        """Identifies what encodes ``side`` ("document" or "query"): base weights, the adapter used, and the
        OpenVINO export that runs them (if ``use_openvino`` made one)."""
        if side == "document" and self._doc_model is not None:
            if self._doc_fp is None:
                self._doc_fp = weights_fingerprint(self._doc_model[0].model, self._fingerprint_extra())
            return f"base:{self._doc_fp}" + self._export_suffix(side)
        return self.adapter_fingerprint(self._adapter_for(side)) + self._export_suffix(side)

    def documents_by_base(self) -> bool:
        """Whether documents are encoded by the base model alone (no adapter, or a query-side one): then a query
        encoded as a document is the untouched model's query vector."""
        return "+" not in self.fingerprint("document").split("@")[0]

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
        if side in self._exports:
            return self._encode_exported(texts, side, batch_size or self.EXPORT_BATCH, show_progress)
        with self.lock:
            st = self._doc_model if self._doc_model is not None and side == "document" else self.st
            with self.base_only(self._adapter_for(side) is None and st is self.st):
                # sentence-transformers sorts by length inside encode, so batches are of like lengths
                vectors = st.encode(texts, batch_size=batch_size or self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=show_progress)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def _feeds(self, texts: Sequence[str], indices: Sequence[int]) -> dict:
        return dict(self.st.tokenizer([texts[i] for i in indices], padding=True, truncation="longest_first",
                                      max_length=self.max_length, return_tensors="np"))

    # 16 texts a call to an export, in batches of like token counts: on SciFact abstracts (2 cores) 1.03-1.09x the
    # throughput of 32 texts sorted by characters (1,000-1,500 abstracts, int8 export, alternated runs)
    EXPORT_BATCH = 16

    def _tokenized(self, texts: Sequence[str]) -> tuple[dict, list[int]]:
        """Every text's token ids, unpadded, and their counts."""
        tokens = self.st.tokenizer(list(texts), truncation="longest_first", max_length=self.max_length)
        return tokens, [len(ids) for ids in tokens["input_ids"]]

    def batch_plan(self, texts: Sequence[str], side: str = "document", batch_size: int | None = None) -> list[list[int]]:
        """The batches (indices into ``texts``) this encoder runs ``side``'s texts in: texts of like token counts
        together. An int8 export's vectors move by up to ~3e-3 with the padding of the batch a text shares (measured
        on SciFact), so work split among processes runs these same batches to give one process's vectors."""
        size = batch_size or (self.EXPORT_BATCH if side in self._exports else self.batch_size)
        return list(batches_by_length(len(texts), self._tokenized(texts)[1], size))

    def _encode_exported(self, texts: list[str], side: str, batch_size: int, show_progress: bool) -> np.ndarray:
        model, pad = self._exports[side], self.st.tokenizer.pad
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokens, lengths = self._tokenized(texts)  # once: each batch is padded from these
        batches = list(batches_by_length(len(texts), lengths, batch_size))
        with tqdm(total=len(batches), desc="encoding", unit="batch", disable=not show_progress, leave=False) as bar:
            def put(i: int, vectors: np.ndarray) -> None:
                out[batches[i]] = vectors
                bar.update()

            model.run_batches((dict(pad({k: [tokens[k][i] for i in idx] for k in tokens.keys()}, return_tensors="np"))
                               for idx in batches), put)
        return out

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

    # ------------------------------------------------------------------ OpenVINO inference
    def _side_copy(self, side: str):
        """A plain torch copy (peft removed, the side's adapter merged in) of the SentenceTransformer for ``side``."""
        if side == "document" and self._doc_model is not None:
            return copy.deepcopy(self._doc_model)
        st = copy.deepcopy(self.st)
        if self.is_peft and not self.is_merged:
            adapter, peft_model = self._adapter_for(side), st[0].model
            if adapter is None:
                st[0].model = peft_model.unload()
            else:
                for other in self.adapter_names:
                    if other != adapter:
                        peft_model.delete_adapter(other)
                st[0].model = peft_model.merge_and_unload()
        return st

    def use_openvino(self, precision: str, texts: Mapping[str, Sequence[str]], sides: Sequence[str] = ("query", "document"),
                     cache_dir=None, min_cosine: float | None = 0.99, batch_size: int = 32,
                     int8_scope: str = "auto") -> dict:
        """Encode ``sides`` through OpenVINO at ``precision`` (``fp32``, ``bf16``, ``int8``) from now on (the other
        side keeps what it has).

        ``texts[side]``: text like what that side encodes (queries, documents), taken from the corpus itself: every
        other text calibrates the int8 export, the others check it. The check compares the export's vectors with
        the torch model's (cosine); a side whose mean cosine is under ``min_cosine`` stays on torch and
        ``QualityRefused`` says so once the other sides are done. Returns the report (kept in ``export_report``
        and saved with the encoder). ``int8_scope``: which matrix products an int8 export quantizes
        (``retrieval.lora.openvino``: ``auto`` keeps the output projections out of int8 only where bf16 is fast
        here)."""
        import torch

        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"OpenVINO precision must be fp32, bf16 or int8, got {precision!r}")
        if any(e.precision != precision for side, e in self._exports.items() if side not in sides):
            self._drop_exports()  # one precision per encoder
        refused = []
        with self.lock:
            for side in sides:
                self._exports.pop(side, None)
                sample = [t for t in texts[side] if isinstance(t, str) and t.strip()]
                calibration, check = sample[::2], sample[1::2]
                if len(calibration) < 2 or not check:
                    raise ValueError(f"use_openvino needs at least 4 {side} texts to calibrate and check, got {len(sample)}")
                made = export_description({
                    "kind": "bi-encoder", "computes": self.fingerprint(side), "max_length": self.max_length,
                    "calibration": hashlib.sha256("\x00".join(calibration).encode()).hexdigest()[:16]},
                    precision, int8_scope)
                model = next((m for m in self._exports.values()  # the other side's, when both compute the same
                              if m.precision == precision and m.config["description"] == made), None)
                if model is None:
                    model = export(_embedding_module(self._side_copy(side)), self._feeds(calibration, [0, 1]),
                                   precision, made,
                                   lambda: (self._feeds(calibration, idx) for idx in
                                            batches_by_length(len(calibration), [len(t) for t in calibration], 8)),
                                   cache_dir, int8_scope=int8_scope)
                with torch.inference_mode():
                    expected = self._encode(check, side, batch_size, False)  # torch: this side has no export yet
                self._exports[side] = model
                got = self._encode(check, side, batch_size, False)
                cosine = (expected * got).sum(axis=1)
                self.export_report.update(precision=precision, min_cosine=min_cosine)
                if precision == "int8":
                    self.export_report["int8_scope"] = model.int8_scope
                self.export_report[side] = {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
                                            "checked_texts": len(check), "calibration_texts": len(calibration)}
                if min_cosine is not None and cosine.mean() < min_cosine:
                    del self._exports[side]
                    self.export_report[side]["refused"] = True
                    refused.append(side)
        if refused:
            side = refused[0]
            raise QualityRefused(f"the {precision} export's {side} vectors have a mean cosine of "
                                 f"{self.export_report[side]['cosine_mean']:.4f} to the torch model's, under "
                                 f"{min_cosine}: that side stays on torch (use another precision, or "
                                 f"min_cosine=None to take it anyway)")
        return self.export_report

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, overwrite: bool = False, extra_json: dict[str, object] | None = None,
             sentence_transformers: bool = True) -> Path:
        """Write ``retrieval_config.json`` and, with adapters, peft's own files (default at the top,
        other adapters in sub-folders). A merged encoder writes a full sentence-transformers model
        and no adapter files. ``extra_json`` (file name -> data) is written beside them and checksummed too.

        ``sentence_transformers``: also write what plain ``SentenceTransformer(path)`` needs to open the folder by
        itself (see ``_sentence_transformers_files``); for a query-only adapter that includes the base model's
        weights (~90 MB for MiniLM), so a folder that only travels inside this library (Ray's object store) leaves
        it out."""
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
                "inference": self._save_exports(tmp),
            }
            if self.is_merged:
                _save_offline(self.st, tmp / "model", self.base_model)
                if self._doc_model is not None:
                    _save_offline(self._doc_model, tmp / "document_model", self.base_model)
            else:
                self.save_adapters(tmp)
                # the adapter at the top is the one a plain loader applies
                if sentence_transformers and self.active_adapter == "default":
                    self._sentence_transformers_files(tmp)
            write_model_config(tmp, config, extra_json)
        return path

    def _sentence_transformers_files(self, root: Path) -> None:
        """What sentence-transformers' ``SentenceTransformer(root)`` reads to open this folder by itself, with no
        code of this library: the tokenizer, the transformer module over peft's files at the top (transformers
        applies them to the base model they name), and the base model's pooling and normalisation.

        A query-only adapter becomes a ``Router``: its query route is that same transformer module at the top
        (route ".") and its document route the base transformer in ``document_0_Transformer/``. Two limits of
        transformers 5.24 shape this: a peft adapter loads only from the folder's top (in a sub-folder, the
        sub-folder is joined to the base model's path), and ``AutoModel`` looks for an adapter at the top whatever
        sub-folder it is given — so the document module's ``model_kwargs`` point peft's search at its own folder
        (``adapter_kwargs.subfolder``), where there is none. The document route keeps the base weights (~90 MB
        for MiniLM): no adapter-only form of "base model for documents" loads with these versions."""
        from sentence_transformers.sentence_transformer.modules import Router

        st_type = lambda m: f"{type(m).__module__}.{type(m).__name__}"  # noqa: E731
        side = self._adapters["default"]["side"]
        self.st[0].tokenizer.save_pretrained(str(root))
        write_json(root / "sentence_bert_config.json", {**self.st[0].get_config_dict(), "max_seq_length": self.max_length})
        modules = [{"idx": 0, "name": "0", "path": "", "type": st_type(self.st[0])}]
        if side == "query":
            doc = self._side_copy("document")[0]
            doc.save(str(root / _DOCUMENT_ROUTE))
            doc_config = root / _DOCUMENT_ROUTE / "sentence_bert_config.json"
            kwargs = read_json(doc_config, "sentence-transformers module config")
            kwargs.setdefault("model_kwargs", {})["adapter_kwargs"] = {"subfolder": _DOCUMENT_ROUTE}
            write_json(doc_config, kwargs)
            router = Router.for_query_document([doc], [doc])  # for its parameters only
            parameters = router.get_config_dict()
            parameters["route_mappings"] = {str(k): v for k, v in (parameters.get("route_mappings") or {}).items()}
            write_json(root / router.config_file_name, {
                "types": {".": st_type(self.st[0]), _DOCUMENT_ROUTE: st_type(doc)},
                "structure": {"query": ["."], "document": [_DOCUMENT_ROUTE]}, "parameters": parameters})
            modules[0]["type"] = st_type(router)
        for i, m in enumerate(self.st):
            if i > 0:
                folder = f"{i}_{type(m).__name__}"
                (root / folder).mkdir()
                m.save(str(root / folder))
                modules.append({"idx": i, "name": str(i), "path": folder, "type": st_type(m)})
        write_json(root / "modules.json", modules)
        write_json(root / "config_sentence_transformers.json", {
            "model_type": "SentenceTransformer", "prompts": dict(self.st.prompts or {}), "default_prompt_name": None,
            "similarity_fn_name": self.st.similarity_fn_name or "cosine"})

    def save_sentence_transformers(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """A self-contained sentence-transformers folder that gives this encoder's vectors with no code of this
        library: ``SentenceTransformer(path).encode_query`` / ``encode_document``. The active adapter is merged into
        full weights; a query-only adapter becomes a ``Router`` (query route: the merged model, document route: the
        base model), so that folder holds the transformer's weights twice (for MiniLM, ~90 MB each) but needs no
        peft; ``save`` writes a folder that plain sentence-transformers opens too, with the adapter unmerged."""
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Router

        enc = self.merged() if self.is_peft and self.active_adapter is not None and not self.is_merged else self
        path = Path(path)
        with self.lock, atomic_dir(path, overwrite=overwrite) as tmp:
            st = enc.st
            if enc._doc_model is not None:
                st = SentenceTransformer(modules=[Router.for_query_document([enc.st[0]], [enc._doc_model[0]]),
                                                  *list(enc.st)[1:]], device=enc.device)
            _save_offline(st, tmp, self.base_model)
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
        else:
            enc = cls(config["base_model"], max_length=config["max_length"], device=device, batch_size=batch_size)
            enc.restore_adapters(path, config)
        enc._load_exports(path, config, verify)
        return enc


def _save_offline(st, folder: Path, base_model: str) -> None:
    """``st.save(folder)`` without the look-ups sentence-transformers' model card makes on the Hugging Face Hub (the
    base model's info, tried under names guessed from its folder): a network call on every save, and a wait where the
    network hangs. The card names the base model as this encoder was given it when that is a Hub id (the packaged
    MiniLM's), not a folder of this machine."""
    card = st.model_card_data
    card.local_files_only = True
    if not card.base_model and not Path(base_model).exists():
        card.base_model = base_model
    st.save(str(folder))


def _embedding_module(st):
    """What an export computes (a torch module over tokenizer output): the sentence-transformers pipeline, then L2
    normalisation."""
    import torch

    class Embedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return torch.nn.functional.normalize(self.st(features)["sentence_embedding"], dim=-1)

    return Embedding()


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
