"""CPU inference through OpenVINO, shared by the bi-encoder and the cross-encoder.

A model (with its active LoRA adapter merged in) is exported with ``openvino.convert_model``; for ``int8`` its
matrix products are quantized statically by NNCF, calibrated on text the caller gives (taken from the corpus
itself). The attention and feed-forward *output* projections stay in higher precision: measured on SciFact,
quantizing them too cost the bi-encoder 0.0048 nDCG@10 (cosine to fp32 0.9972), keeping them cost 0.0023
(cosine 0.9989) at the same speed. What is not int8 runs in bf16 where the CPU has it natively (OpenVINO's own
choice), else in fp32; ``bf16`` and ``fp32`` export without quantizing.

``Inference`` names the choice (``torch``, ``openvino-fp32``, ``openvino-bf16``, ``openvino-int8``). An export is
written to a folder (``model.xml`` + ``model.bin`` + ``openvino_config.json``) and cached by what it was made
from (weights, adapter, precision, calibration), so the same model is exported once. The GPU path stays torch.
No telemetry is sent (see ``_openvino``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..util import CacheWarning, DamagedArtefact, atomic_dir, default_cache_dir, library_version, read_json, sealed
from ..util import check_seal, file_checksums, verify_files, write_json

INFERENCES = ("torch", "openvino-fp32", "openvino-bf16", "openvino-int8")
KEPT_IN_HIGHER_PRECISION = (r".*output\.dense.*", r".*output/dense.*")  # int8 there hurts (module docstring)
CONFIG_NAME = "openvino_config.json"
MODEL_NAME = "model.xml"


def check_inference(inference: str) -> str:
    if inference not in INFERENCES:
        raise ValueError(f"inference must be one of {INFERENCES}, got {inference!r}")
    return inference


def precision_of(inference: str) -> str | None:
    """``openvino-int8`` -> ``int8``; ``torch`` -> None."""
    check_inference(inference)
    return None if inference == "torch" else inference.split("-", 1)[1]


def _openvino():
    # OpenVINO's converter and NNCF report every conversion and quantization to Google Analytics unless a consent
    # file in the user's home says no, from a forked process that deadlocks at exit in a threaded program. This
    # library sends no telemetry: with their telemetry package unimportable both use their own stubs.
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    try:
        import openvino
    except ImportError:
        raise ImportError("OpenVINO inference needs openvino (and nncf for int8): pip install openvino nncf") from None
    return openvino


def default_threads() -> int:
    """Threads an export runs on: ``$OMP_NUM_THREADS`` where it is set (Ray sets it to a worker's CPUs, so workers
    sharing a node do not oversubscribe it), else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


class OpenVinoModel:
    """An exported model compiled for the CPU; ``model(feed)`` runs one batch of tokenizer output (numpy)."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, verify: bool = True):
        ov = _openvino()
        self.folder = Path(folder)
        self.config = read_json(self.folder / CONFIG_NAME, "OpenVINO export config")
        check_seal(self.config, self.folder / CONFIG_NAME, "the export's settings")
        if verify:
            verify_files(self.folder, self.config.get("checksums", {}), "OpenVINO export")
        self.precision = self.config["precision"]
        settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads or default_threads())}
        if self.precision in ("fp32", "bf16"):
            settings["INFERENCE_PRECISION_HINT"] = "f32" if self.precision == "fp32" else "bf16"
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(self.folder / MODEL_NAME)), "CPU", settings)
        except RuntimeError as e:
            raise DamagedArtefact(f"{self.folder}: OpenVINO cannot compile the exported model "
                                  f"({str(e).strip().splitlines()[-1][:200]}); export it again") from None
        self.inputs = [p.get_any_name() for p in self.compiled.inputs]
        self._local = threading.local()

    @property
    def fingerprint(self) -> str:
        """What the export was made from (weights, adapter, precision, calibration): its cache key."""
        return self.config["made_from"]

    def __call__(self, feed: dict) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:  # one infer request per thread: requests are not thread-safe, the compiled model is
            request = self._local.request = self.compiled.create_infer_request()
        return np.array(request.infer({name: feed[name] for name in self.inputs})[0], copy=True)


def export(module, example: dict, precision: str, made_from: dict, calibration: Callable[[], Iterable[dict]] | None,
           cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> OpenVinoModel:
    """The OpenVINO export of torch ``module`` (called with a tokenizer's numpy arrays as keyword arguments) at
    ``precision``, from the cache folder when it holds one for the same ``made_from`` (a description of the weights,
    adapter and calibration), else converted (and, for int8, quantized on ``calibration()``'s batches) and cached."""
    key = hashlib.sha256(json.dumps({**made_from, "precision": precision}, sort_keys=True).encode()).hexdigest()[:16]
    folder = (Path(cache_dir) if cache_dir else default_cache_dir()) / "openvino" / f"{precision}-{key}"
    if folder.exists():
        try:
            return OpenVinoModel(folder, threads)
        except (DamagedArtefact, FileNotFoundError, ValueError, KeyError) as e:
            warnings.warn(f"exporting again: the cached OpenVINO model cannot be reused: {e}", CacheWarning, stacklevel=2)
            shutil.rmtree(folder)
    import logging

    import torch

    ov = _openvino()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about every data-dependent branch of the model code
        model = ov.convert_model(module.eval(), example_input={k: torch.as_tensor(v) for k, v in example.items()})
    if precision == "int8":
        import nncf

        nncf.set_log_level(logging.WARNING)
        batches = list(calibration())
        model = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(batches),
                              ignored_scope=nncf.IgnoredScope(patterns=list(KEPT_IN_HIGHER_PRECISION), validate=False))
    with atomic_dir(folder, overwrite=True) as tmp:
        ov.save_model(model, str(tmp / MODEL_NAME), compress_to_fp16=False)
        write_json(tmp / CONFIG_NAME, sealed({"precision": precision, "made_from": key, "description": made_from,
                                              "library_version": library_version(),
                                              "checksums": file_checksums(tmp, skip=(CONFIG_NAME,))}))
    return OpenVinoModel(folder, threads)


def copy_export(model: OpenVinoModel, dest: Path) -> None:
    """Write an export into a saved model's folder (checked by that folder's checksums too)."""
    shutil.copytree(model.folder, dest)


def batches_by_length(n: int, lengths: Sequence[int], batch_size: int) -> Iterable[list[int]]:
    """Indices in batches of like lengths (longest first), so padding costs little."""
    order = sorted(range(n), key=lambda i: -lengths[i])
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]
