"""Which CPUs compute bf16 fast (retrieval.cpu), and --without-amx (benchmarks.without_amx) in real processes."""

import subprocess
import sys
from pathlib import Path

import pytest

from retrieval import cpu

ROOT = Path(__file__).resolve().parents[1]
LINUX_X86_64 = cpu.linux_x86_64()
AMX_LISTED = LINUX_X86_64 and " amx_tile" in Path("/proc/cpuinfo").read_text()


@pytest.mark.parametrize("flags, granted, fast", [
    ({"avx512_bf16": False, "amx": False, "onednn_bf16": True}, False, False),  # plain AVX512: oneDNN emulates bf16
    ({"avx512_bf16": True, "amx": False, "onednn_bf16": True}, False, False),   # AVX512-BF16 alone: slower than fp32
    ({"avx512_bf16": True, "amx": True, "onednn_bf16": True}, True, True),
    ({"avx512_bf16": True, "amx": True, "onednn_bf16": True}, False, False),    # AMX listed, refused to the process
    ({"avx512_bf16": None, "amx": None, "onednn_bf16": True}, True, True),      # a torch that cannot name them
    ({"avx512_bf16": None, "amx": None, "onednn_bf16": False}, True, False),
])
def test_auto_precision_takes_bf16_only_where_amx_is_granted(monkeypatch, flags, granted, fast):
    from rerankers import cross_encoder

    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    monkeypatch.setattr(cpu, "amx_granted", lambda: granted)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    assert cpu.fast_bf16() is fast
    assert cross_encoder.resolve_precision("auto", "cpu") == ("bfloat16" if fast else "float32")
    assert cross_encoder.resolve_precision("float32", "cpu") == "float32"
    assert f"amx={'?' if flags['amx'] is None else flags['amx']}" in cpu.cpu_facts()
    assert ("amx_granted=" in cpu.cpu_facts()) is bool(flags["amx"])
    # off x86 (ARM's bf16 instructions) oneDNN's own check decides
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert cpu.fast_bf16() is bool(flags["onednn_bf16"])


def _child(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.skipif(not LINUX_X86_64, reason="AMX is granted per process on Linux on x86_64")
def test_without_amx_refuses_amx_to_the_process_and_every_bf16_choice_follows():
    out = _child("from benchmarks.without_amx import deny_amx; deny_amx()\n"
                 "from retrieval import cpu; from retrieval.lora import openvino\n"
                 "print(cpu.amx_granted(), cpu.fast_bf16(), openvino.native_bf16(), openvino.resolve_int8_scope('auto'))")
    assert out == "False False False all"


@pytest.mark.skipif(not AMX_LISTED, reason="needs a CPU whose /proc/cpuinfo lists amx_tile")
def test_amx_is_granted_where_the_cpu_has_it_and_refusing_it_late_is_an_error():
    out = _child("from retrieval import cpu; print(cpu.amx_granted(), cpu.fast_bf16())")
    assert out == "True True"
    done = subprocess.run([sys.executable, "-c", "from retrieval import cpu; cpu.amx_granted()\n"
                           "from benchmarks.without_amx import deny_amx; deny_amx()"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "already granted" in done.stderr


@pytest.mark.skipif(not LINUX_X86_64, reason="AMX is granted per process on Linux on x86_64")
def test_the_speed_benchmarks_take_without_amx():
    from benchmarks.__main__ import _parser

    for command in ("speed-dense", "speed-rerank", "run"):
        assert _parser().parse_args([command, "--without-amx"]).without_amx
    assert not _parser().parse_args(["speed-dense"]).without_amx
