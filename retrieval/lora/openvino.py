"""CPU inference through OpenVINO, shared by the bi-encoder and the cross-encoder.

A model (with its active LoRA adapter merged in) is exported with ``openvino.convert_model``; for ``int8`` its
matrix products are quantized statically by NNCF, calibrated on text the caller gives (taken from the corpus
itself). What is not int8 runs in bf16 where bf16 is fast here (``native_bf16``: on x86, AMX granted), else in fp32, and
that decides which matrix products are quantized (``int8_scope``): ``"keep-outputs"`` leaves the attention and
feed-forward *output* projections in higher precision, ``"all"`` quantizes them too, and ``"auto"`` (the default)
keeps them only where bf16 is fast. Measured: on an AMX CPU, where the kept layers run in bf16,
keeping them cost the bi-encoder 0.0023 nDCG@10 on SciFact against 0.0048 for quantizing them (cosine to fp32
0.9989 vs 0.9972) at the same speed; on an AVX512-VNNI CPU without bf16 they run in fp32 and cost 40% of the
time: quantizing them too encodes 95 SciFact abstracts/s instead of 67 (torch float32: 36; zero-shot dev
nDCG@10 0.6466 vs 0.6507) and reranks 30 pairs in 320 ms instead of 483 (torch float32: 1255; the trained
pipeline's dev nDCG@10 0.7589 vs 0.7610, float32 0.7595). ``bf16`` and ``fp32`` export without quantizing.

``Inference`` names the choice (``torch``, ``openvino-fp32``, ``openvino-bf16``, ``openvino-int8``). An export is
written to a folder (``model.xml`` + ``model.bin`` + ``openvino_config.json``) and cached by what it was made
from (weights, adapter, precision, calibration), so the same model is exported once. The GPU path stays torch.
No telemetry is sent (see ``_openvino``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..cpu import fast_bf16, x86
from ..util import CacheWarning, DamagedArtefact, atomic_dir, default_cache_dir, library_version, read_json, sealed
from ..util import check_seal, file_checksums, verify_files, write_json

INFERENCES = ("torch", "openvino-fp32", "openvino-bf16", "openvino-int8")
INT8_SCOPES = ("auto", "keep-outputs", "all")
KEPT_IN_HIGHER_PRECISION = (r".*output\.dense.*", r".*output/dense.*")  # "keep-outputs" (module docstring)
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


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether OpenVINO computes bf16 fast on this CPU: it reports BF16 and, on x86, AMX is granted to this process
    (``retrieval.cpu``; OpenVINO also reports BF16 for AVX512-BF16 alone, where its bf16 is slower than fp32). Then
    what an int8 export leaves unquantized runs in bf16, else in fp32."""
    return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") and (not x86() or fast_bf16())


def resolve_int8_scope(scope: str) -> str:
    """``auto`` -> ``keep-outputs`` where bf16 is fast here (``native_bf16``), ``all`` elsewhere (module docstring)."""
    if scope not in INT8_SCOPES:
        raise ValueError(f"int8_scope must be one of {INT8_SCOPES}, got {scope!r}")
    if scope == "auto":
        return "keep-outputs" if native_bf16() else "all"
    return scope


def export_description(made_from: dict, precision: str, int8_scope: str = "auto") -> dict:
    """What an export at ``precision`` is made from: ``made_from`` and, for an int8 export quantizing ``all``, the
    scope (``keep-outputs`` adds nothing, so those exports keep the cache keys they had before the choice)."""
    if precision != "int8":
        return made_from
    scope = resolve_int8_scope(made_from.get("int8_scope", int8_scope))
    return {**made_from, "int8_scope": scope} if scope != "keep-outputs" else made_from


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
        elif x86() and not native_bf16():  # OpenVINO's default would run what int8 leaves in slow bf16 (AVX512-BF16)
            settings["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        try:  # the read model is kept: the throughput compilation comes from it, so no file is read after this
            self._model = core.read_model(str(self.folder / MODEL_NAME))
            self.compiled = core.compile_model(self._model, "CPU", settings)
        except RuntimeError as e:
            raise DamagedArtefact(f"{self.folder}: OpenVINO cannot compile the exported model "
                                  f"({str(e).strip().splitlines()[-1][:200]}); export it again") from None
        self.inputs = [p.get_any_name() for p in self.compiled.inputs]
        self._local = threading.local()
        self._threads = settings["INFERENCE_NUM_THREADS"]
        self._settings = {k: v for k, v in settings.items() if k != "PERFORMANCE_HINT"}
        self._throughput = None  # compiled on the first many-batch call (``run_batches``)
        self._streams = 1
        self.parallel_batches = True  # False: ``run_batches`` runs one batch at a time (benchmarks compare the two)
        self._throughput_lock = threading.Lock()

    @property
    def int8_scope(self) -> str | None:
        """Which matrix products an int8 export quantized (``keep-outputs`` for exports older than the choice)."""
        return self.config["description"].get("int8_scope", "keep-outputs") if self.precision == "int8" else None

    @property
    def fingerprint(self) -> str:
        """What the export was made from (weights, adapter, precision, calibration): its cache key."""
        return self.config["made_from"]

    def __call__(self, feed: dict) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:  # one infer request per thread: requests are not thread-safe, the compiled model is
            request = self._local.request = self.compiled.create_infer_request()
        return np.array(request.infer({name: feed[name] for name in self.inputs})[0], copy=True)

    def streams(self) -> int:
        """How many batches ``run_batches`` runs at once: the throughput compilation's streams (one per core; it is
        compiled on the first call that needs it), 1 with a single thread or ``parallel_batches`` off."""
        if self._threads < 2 or not self.parallel_batches:
            return 1
        with self._throughput_lock:
            if self._throughput is None:
                self._throughput = _openvino().Core().compile_model(
                    self._model, "CPU", {**self._settings, "PERFORMANCE_HINT": "THROUGHPUT"})
                self._streams = int(self._throughput.get_property("NUM_STREAMS"))  # asked once, not per query
        return self._streams

    def batch_size(self, n: int, batch_size: int) -> int:
        """The batch size a call of ``n`` items runs at: at most ``batch_size``, and at most an even share of the
        ``n`` per stream, so that even one query's few candidates run a batch on each core at once (10 pairs on 2
        cores: 1.045x one batch on both, a session's probe; at 20 and 30 pairs 1.09-1.10x)."""
        return 1 if n <= 1 else min(batch_size, -(-n // self.streams()))

    def _throughput_queue(self):
        """This thread's queue of infer requests on the throughput-compiled model (one stream per core, one thread
        each), or None where that gives one stream (a single thread)."""
        if self.streams() < 2:
            return None
        queue = getattr(self._local, "queue", None)
        if queue is None:  # like requests, a queue is not thread-safe
            jobs = int(self._throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            queue = self._local.queue = _openvino().AsyncInferQueue(self._throughput, jobs)
        return queue

    def run_batches(self, feeds: Iterable[dict], put: Callable[[int, np.ndarray], None]) -> None:
        """Run every feed (``put(i, output)`` with the i-th feed's output, in any order). Two batches or more run
        on a model compiled for throughput, a batch on each core at once (one thread each) instead of each batch on
        every core in turn (``speed-dense`` / ``speed-rerank`` time both), with outputs identical to
        ``model(feed)``'s, since a batch's output does not depend on its threads. One batch, or one thread, runs as
        ``model(feed)``. A failure in ``put`` stops the feeds still to start and is raised here."""
        feeds = iter(feeds)
        head = list(itertools.islice(feeds, 2))
        queue = self._throughput_queue() if len(head) == 2 else None
        feeds = itertools.chain(head, feeds)
        if queue is None:
            for i, feed in enumerate(feeds):
                put(i, self(feed))
            return
        failures: list[BaseException] = []

        def done(request, i):
            try:
                put(i, np.array(request.get_output_tensor(0).data, copy=True))
            except BaseException as e:  # noqa: BLE001 - raised again on the caller's thread below
                failures.append(e)

        queue.set_callback(done)
        try:
            for i, feed in enumerate(feeds):
                if failures:  # no use running the rest
                    break
                queue.start_async({name: feed[name] for name in self.inputs}, i)
        finally:
            queue.wait_all()
        if failures:
            raise failures[0]


def export(module, example: dict, precision: str, made_from: dict, calibration: Callable[[], Iterable[dict]] | None,
           cache_dir: str | os.PathLike | None = None, threads: int | None = None,
           int8_scope: str = "auto") -> OpenVinoModel:
    """The OpenVINO export of torch ``module`` (called with a tokenizer's numpy arrays as keyword arguments) at
    ``precision``, from the cache folder when it holds one for the same ``made_from`` (a description of the weights,
    adapter and calibration), else converted (and, for int8, quantized on ``calibration()``'s batches: the matrix
    products ``int8_scope`` names) and cached."""
    made_from = export_description(made_from, precision, int8_scope)
    scope = made_from.get("int8_scope", "keep-outputs")
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
                              ignored_scope=nncf.IgnoredScope(
                                  patterns=list(KEPT_IN_HIGHER_PRECISION) if scope == "keep-outputs" else [],
                                  validate=False))
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
