"""One host for LoRA adapters (peft) on a torch module; the bi-encoder and the cross-encoder both use it.

A model class that hosts adapters subclasses ``AdapterHost``, calls ``_init_adapters()`` and says where its
torch module lives (the ``module`` property and ``_replace_module``, which peft's first adapter wraps). The
host keeps one state shape for every model kind:

- ``adapters``: ``{name: {"lora": {...settings...}, ...facts the model records}}`` (a copy; e.g. the
  bi-encoder records each adapter's ``side``, the cross-encoder the base weights it was trained on);
- ``active_adapter``: the adapter that applies (``None``: the base model alone);
- ``merged_from``: set on a model whose adapter was folded into its weights (``merged()``).

and does the adapter lifecycle the peft way under one re-entrant ``lock``: add, load, switch, disable,
unload, save, merge, the adapter's weights (for training), and fingerprints of the base weights and of each
adapter. Callers that switch adapters per call (``retrieval.pipeline.shared``) hold ``lock`` around the call.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import threading
import warnings
from pathlib import Path

from ..card import CARD_NAME, model_card
from ..util import DamagedArtefact, check_seal, file_checksums, read_json, sealed, verify_files, write_json
from .openvino import OpenVinoModel, copy_export, resolve_int8_scope
from .settings import LoraSettings

CONFIG_NAME = "retrieval_config.json"  # what a saved model folder holds beside peft's own files


def adapter_weights(module, name: str) -> dict:
    """peft's state dict of adapter ``name`` (what it saves). peft's default asks the Hugging Face Hub whether the base
    model's vocabulary was resized (``save_embedding_layers="auto"``, when the adapter's base is named by a Hub id, as
    a saved adapter's is): a network call on every hash and save, a warning where there is no network and a wait
    where it hangs. This library never resizes a vocabulary, so the base's embeddings are never saved with it."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(module, adapter_name=name, save_embedding_layers=False)


@contextlib.contextmanager
def _quiet_peft():
    """Warnings of peft's that a user of this library cannot act on: peft (0.21) asks a transformers 5 model for
    ``is_gradient_checkpointing`` whenever it wraps one, and transformers answers with a FutureWarning of its
    deprecation; deleting the active adapter, peft says which one it makes active instead (this host then records
    none active, so the base alone computes until ``set_adapter``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted", category=UserWarning)
        yield


def write_model_config(folder: Path, config: dict, extra_json: dict[str, object] | None = None) -> None:
    """Write a saved model's ``retrieval_config.json`` last: ``config`` with the checksum of every other file in
    ``folder`` (peft's, or a merged model's, the ``extra_json`` files and the card written here first), sealed.
    The card (``README.md``) replaces peft's empty template."""
    for name, data in (extra_json or {}).items():
        write_json(folder / name, data)
    (folder / CARD_NAME).write_text(model_card(config, (extra_json or {}).get("train_result.json")), encoding="utf-8")
    write_json(folder / CONFIG_NAME, sealed({**config, "checksums": file_checksums(folder, skip=(CONFIG_NAME,))}))


def read_model_config(folder: str | os.PathLike, what: str, verify: bool = True, require_checksums: bool = False) -> dict:
    """A saved model's ``retrieval_config.json``, checked against its seal and, with ``verify``, every file
    against its checksum (``DamagedArtefact`` names it). A folder saved before checksums existed loads unless
    ``require_checksums`` (a cache does: it cannot check such an entry)."""
    folder = Path(folder)
    config = read_json(folder / CONFIG_NAME, what)
    checked = check_seal(config, folder / CONFIG_NAME, what) and "checksums" in config
    if not checked and require_checksums:
        raise DamagedArtefact(f"{folder}: {CONFIG_NAME} records no checksums (written by an older version), so the "
                              f"{what} cannot be checked")
    if verify and checked:
        verify_files(folder, config["checksums"], what)
    return config


class AdapterMismatch(ValueError):
    """An adapter that does not fit the model it is loaded into (another base model, head or kind)."""


class QualityRefused(ValueError):
    """An export whose outputs drift from the torch model's more than allowed (the report says how much)."""


def check_adapter_name(name: str) -> None:
    if not name or not isinstance(name, str) or "/" in name or name.startswith("."):
        raise ValueError(f"adapter name must be a plain folder name, got {name!r}")


def _tensor_bytes(tensor) -> bytes:
    return tensor.detach().cpu().contiguous().float().numpy().tobytes()


def weights_fingerprint(module, extra: bytes = b"") -> str:
    """sha256 (16 hex digits) of a module's weights, adapters left out: the same whether peft wraps it or not."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if "lora_" in name or "modules_to_save" in name:
            continue
        h.update(name.replace(".base_layer", "").replace(".original_module", "").encode())
        h.update(_tensor_bytes(tensor))
    h.update(extra)
    return h.hexdigest()[:16]


class AdapterHost:
    """The adapter lifecycle shared by every model that takes LoRA adapters (see the module docstring)."""

    base_model: str

    # ------------------------------------------------------------------ what a model class provides
    def _init_adapters(self) -> None:
        self.lock = threading.RLock()
        self._adapters: dict[str, dict] = {}
        self.active_adapter: str | None = None
        self.merged_from: str | None = None
        self._base_fp: str | None = None
        self._exports: dict[str, OpenVinoModel] = {}  # side -> the OpenVINO export that computes it
        self.export_report: dict = {}

    @property
    def module(self):
        """The torch module adapters are added to (a ``peft.PeftModel`` once one is)."""
        raise NotImplementedError

    def _replace_module(self, module) -> None:
        raise NotImplementedError

    def _fingerprint_extra(self) -> bytes:
        """Bytes that also decide what the model computes, hashed with its weights (e.g. a maximum length)."""
        return b""

    def _check_adapter(self, path: Path, config: dict) -> None:
        """Refuse an adapter folder made for another model; the default checks its target modules exist."""
        targets = config.get("target_modules") or []
        if isinstance(targets, str):  # a regular expression: peft checks it
            return
        names = [n for n, _ in self.base_module().named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]  # peft's matching
        if missing:
            raise AdapterMismatch(f"{path}: the adapter targets modules {missing} that {self.base_model} does not "
                                  f"have; it was trained for another base model")

    def _copy_for_merge(self) -> "AdapterHost":
        """A shallow copy of the model whose torch module (and what holds it) is a deep copy."""
        raise NotImplementedError

    def _after_merge(self, source: "AdapterHost") -> None:
        """Anything a merged copy needs besides its merged weights."""

    # ------------------------------------------------------------------ facts
    @property
    def is_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self.module, PeftModel)

    @property
    def is_merged(self) -> bool:
        return self.merged_from is not None

    def base_module(self):
        """The module without peft's wrapper (adapter layers may still be injected into it)."""
        return self.module.get_base_model() if self.is_peft else self.module

    @property
    def adapters(self) -> dict[str, dict]:
        return copy.deepcopy(self._adapters)

    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def trainable_share(self) -> float:
        params = list(self.module.parameters())
        total = sum(p.numel() for p in params)
        return sum(p.numel() for p in params if p.requires_grad) / total if total else 0.0

    def base_fingerprint(self) -> str:
        """The base weights (adapters left out), whatever adapters are loaded: what an adapter is trained on."""
        if self._base_fp is None:
            self._base_fp = weights_fingerprint(self.base_module(), self._fingerprint_extra())
        return self._base_fp

    def adapter_hash(self, name: str) -> str:
        h = hashlib.sha256()
        for key, tensor in sorted(adapter_weights(self.module, name).items()):
            h.update(key.encode())
            h.update(_tensor_bytes(tensor))
        return h.hexdigest()[:16]

    def adapter_fingerprint(self, name: str | None) -> str:
        """Identifies what computes with adapter ``name`` (``None``: the base alone): base weights + adapter."""
        base = f"base:{self.base_fingerprint()}"
        if self.is_merged:
            return f"{base}+merged:{self.merged_from}"
        if name is None:
            return base
        return f"{base}+{name}:{self.adapter_hash(name)}"

    # ------------------------------------------------------------------ lifecycle
    def _check_unmerged(self) -> None:
        if self.is_merged:
            raise ValueError("this model is merged; adapters are managed on the unmerged one")

    def _check_new(self, name: str) -> None:
        check_adapter_name(name)
        if name in self._adapters:
            raise ValueError(f"an adapter named {name!r} exists already; choose another name")

    def add_lora(self, settings: LoraSettings, name: str = "default", **facts):
        """Add a fresh, trainable LoRA adapter and make it the active one; ``facts`` are recorded with it."""
        from peft import get_peft_model

        with self.lock:
            self._check_unmerged()
            self._check_new(name)
            self.base_fingerprint()  # of the weights as they are before peft wraps them
            if self.is_peft:
                self.module.add_adapter(name, settings.peft_config(self.module))
            else:
                with _quiet_peft():
                    self._replace_module(get_peft_model(self.module, settings.peft_config(self.module),
                                                        adapter_name=name))
            self._adapters[name] = {**facts, "lora": settings.to_dict()}
            self.set_adapter(name)
            self._drop_exports()
        return self

    def load_adapter(self, path: str | os.PathLike, name: str = "default", info: dict | None = None, **facts) -> None:
        """Load a peft adapter folder (``adapter_config.json`` + weights) under ``name``, not trainable, and make
        it the active one. ``info`` is what a saved model recorded for it; otherwise its settings are read from
        peft's config and ``facts`` added."""
        from peft import PeftModel

        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{path}: no adapter_config.json; not a peft adapter folder")
        check_adapter_name(name)
        config = read_json(path / "adapter_config.json", "peft adapter config")
        self._check_adapter(path, config)
        with self.lock:
            self._check_unmerged()
            self._check_new(name)
            try:
                if self.is_peft:
                    self.module.load_adapter(str(path), adapter_name=name, is_trainable=False)
                else:
                    with _quiet_peft():
                        self._replace_module(PeftModel.from_pretrained(self.module, str(path), adapter_name=name,
                                                                       is_trainable=False))
            except RuntimeError as e:  # size mismatches that the checks did not see
                raise AdapterMismatch(f"{path}: the adapter does not fit {self.base_model}: {e}") from None
            if info is None:
                lora = {"r": config.get("r"), "alpha": config.get("lora_alpha"), "dropout": config.get("lora_dropout"),
                        "target_modules": sorted(config.get("target_modules") or [])}
                if config.get("modules_to_save"):
                    lora["modules_to_save"] = sorted(config["modules_to_save"])
                info = {**facts, "lora": lora}
            self._adapters[name] = copy.deepcopy(info)
            self.set_adapter(name)
            self._drop_exports()

    def set_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise KeyError(f"no adapter named {name!r}; adapters: {sorted(self._adapters) or 'none'}")
        with self.lock:
            if not self.is_merged:
                self.module.set_adapter(name)
            if self.active_adapter != name:
                self._drop_exports()
            self.active_adapter = name

    def disable_adapters(self) -> None:
        """Run the base model alone (the adapters stay loaded; ``set_adapter`` brings one back)."""
        with self.lock:
            self._check_unmerged()
            if self.active_adapter is not None:
                self._drop_exports()
            self.active_adapter = None

    def unload_adapter(self, name: str) -> None:
        """Remove adapter ``name`` from the model."""
        with self.lock:
            self._check_unmerged()
            if name not in self._adapters:
                raise KeyError(f"no adapter named {name!r}; adapters: {sorted(self._adapters) or 'none'}")
            with _quiet_peft():
                self.module.delete_adapter(name)
            del self._adapters[name]
            if self.active_adapter == name:
                self.active_adapter = None
                self._drop_exports()

    @contextlib.contextmanager
    def base_only(self, when: bool = True):
        """Inside, the base model runs without its adapters (when ``when``; the adapters stay loaded)."""
        if when and self.is_peft and not self.is_merged:
            with self.module.disable_adapter():
                yield
        else:
            yield

    def adapter_state(self, name: str | None = None) -> dict:
        """A copy of the adapter's weights (peft state dict; for the cross-encoder the head too)."""
        weights = adapter_weights(self.module, name or self.active_adapter)
        return {k: v.detach().clone() for k, v in weights.items()}

    def set_adapter_state(self, state: dict, name: str | None = None) -> None:
        from peft import set_peft_model_state_dict

        with self.lock:
            set_peft_model_state_dict(self.module, state, adapter_name=name or self.active_adapter)
            self._drop_exports()

    def redraw_lora(self, name: str | None = None, seed: int = 0) -> None:
        """Draw adapter ``name``'s LoRA weights afresh with peft's own initialisation (A at random under ``seed``, B
        at zero: the adapter adds nothing again); the other weights it trains (a head in ``modules_to_save``) stay
        as they are. The global random state is left as it was."""
        import torch
        from peft.tuners.lora import LoraLayer

        name = name or self.active_adapter
        with self.lock:
            self._check_unmerged()
            if name not in self._adapters:
                raise KeyError(f"no adapter named {name!r}; adapters: {sorted(self._adapters) or 'none'}")
            cuda = sorted({p.device.index or 0 for p in self.module.parameters() if p.device.type == "cuda"})
            with torch.random.fork_rng(devices=cuda):  # a GPU's generator draws there: kept and restored too
                torch.manual_seed(seed)
                for module in self.module.modules():
                    if isinstance(module, LoraLayer) and name in module.lora_A:
                        module.reset_lora_parameters(name, True)
            self._drop_exports()

    @contextlib.contextmanager
    def adapter_states_tried(self, name: str | None = None):
        """Inside, ``set_adapter_state`` may load other weights (each drops the exports: they fold in the weights of
        their time); on leaving, the adapter's weights of the start come back, and with them the exports made from
        those weights, so the model computes the way it did before (an OpenVINO export stays in use)."""
        name = name or self.active_adapter
        kept = self.adapter_state(name)
        with self.lock:
            exports, report = dict(self._exports), self.export_report
        try:
            yield
        finally:
            with self.lock:  # re-entrant: no call sees the kept weights without their export
                self.set_adapter_state(kept, name)
                self._exports, self.export_report = exports, report

    def save_adapters(self, folder: str | os.PathLike) -> None:
        """peft's own files for every adapter: ``default`` at the top, the others in sub-folders. Their
        ``base_model_name_or_path`` names the base model as it was given (a Hugging Face id such as the packaged
        all-MiniLM-L6-v2's), never the folder it was read from on this machine, so a copied folder still says
        which model it adapts."""
        if self.is_peft and self._adapters:
            self.module.save_pretrained(str(folder), selected_adapters=list(self._adapters),
                                        save_embedding_layers=False)  # no Hub look-up (``adapter_weights``)
            for name in self._adapters:
                path = Path(folder) / ("" if name == "default" else name) / "adapter_config.json"
                config = read_json(path, "adapter config")
                config["base_model_name_or_path"] = self.base_model
                write_json(path, config)

    def restore_adapters(self, folder: str | os.PathLike, config: dict) -> None:
        """Bring back what a saved model folder records (``config``: its ``retrieval_config.json``): every adapter
        from peft's files (``default`` at the top, the others in sub-folders) and the active one; for a merged
        model, only the record of what was merged."""
        if config.get("merged"):
            self._adapters = copy.deepcopy(config["adapters"])
            self.active_adapter = self.merged_from = config["active"]
            return
        folder = Path(folder)
        for name, info in config.get("adapters", {}).items():
            self.load_adapter(folder if name == "default" else folder / name, name=name, info=info)
        if config.get("active"):
            self.set_adapter(config["active"])
        else:
            self.disable_adapters()

    # ------------------------------------------------------------------ OpenVINO inference
    @property
    def inference(self) -> str:
        """``torch``, or ``openvino-<precision>`` once ``use_openvino`` exported the model (some side of it)."""
        return f"openvino-{next(iter(self._exports.values())).precision}" if self._exports else "torch"

    def inference_of(self, side: str) -> str:
        model = self.export_of(side)
        return "torch" if model is None else f"openvino-{model.precision}"

    def export_of(self, side: str) -> OpenVinoModel | None:
        """The OpenVINO export that computes ``side`` (None where torch does)."""
        return self._exports.get(side)

    def exports_current(self) -> bool:
        """Whether every int8 export quantized what ``int8_scope="auto"`` quantizes on this CPU (a saved or cached
        model may have been exported before the choice existed, or on a CPU of the other kind)."""
        scopes = {m.int8_scope for m in self._exports.values()} - {None}
        return not scopes or scopes == {resolve_int8_scope("auto")}

    def _drop_exports(self) -> None:
        """An export has the adapter of its time folded in: a change of adapters or their weights returns to torch."""
        self._exports, self.export_report = {}, {}

    def use_torch(self) -> None:
        """Compute with the torch model again (exports are dropped; ``use_openvino`` makes them again)."""
        self._drop_exports()

    def _export_suffix(self, side: str) -> str:
        model = self._exports.get(side)
        return "" if model is None else f"@openvino-{model.precision}:{model.fingerprint}"

    def _save_exports(self, folder: Path) -> dict | None:
        """Each side's export in ``openvino/<side>`` (a side that uses another side's export refers to it)."""
        if not self._exports:
            return None
        sides: dict[str, str] = {}
        written: dict[str, str] = {}
        for side, model in self._exports.items():
            if model.fingerprint not in written:
                written[model.fingerprint] = f"openvino/{side}"
                copy_export(model, folder / "openvino" / side)
            sides[side] = written[model.fingerprint]
        return {"precision": next(iter(self._exports.values())).precision, "sides": sides, "report": self.export_report}

    def _load_exports(self, folder: Path, config: dict, verify: bool = True) -> None:
        saved = config.get("inference")
        if not saved:
            return
        models: dict[str, OpenVinoModel] = {}
        for side, rel in saved["sides"].items():
            models[side] = next((m for m in models.values() if m.folder == folder / rel), None) or OpenVinoModel(
                folder / rel, verify=verify)
        self._exports, self.export_report = models, saved.get("report", {})

    def merged(self):
        """A new model with the active adapter folded into the weights: no adapter cost at all."""
        name = self.active_adapter
        if name is None or not self.is_peft:
            raise ValueError("no active adapter to merge; set_adapter(name) first")
        with self.lock:
            clone = self._copy_for_merge()
            peft_module = clone.module
            for other in list(self._adapters):
                if other != name:
                    peft_module.delete_adapter(other)
            clone._replace_module(peft_module.merge_and_unload())
            clone.lock = threading.RLock()
            clone._adapters = {name: {**copy.deepcopy(self._adapters[name]), "merged": True}}
            clone.active_adapter = clone.merged_from = name
            clone._base_fp = None
            clone._exports, clone.export_report = {}, {}
            clone._after_merge(self)
        return clone
