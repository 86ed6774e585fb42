"""Whether this CPU computes bf16 fast, for torch (the reranker's ``precision="auto"``) and OpenVINO (what an int8
export leaves unquantized, its ``int8_scope="auto"``).

On x86 only AMX makes bf16 fast, and only where the kernel grants AMX to the process: Linux asks a process to
request it (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, what oneDNN does before its first AMX kernel), and a kernel before
5.16, a virtual machine or a seccomp policy can refuse. AVX512-BF16 alone is not enough: on an AMX CPU with AMX
refused (this project's ``--without-amx``: the same cores through their AVX512-BF16 kernels) a bf16 matrix product
ran at 0.55x float32's rate in torch, a reranker training step took 1.20x float32's time (``speed-rerank``), and
OpenVINO's bf16 export of the bi-encoder encoded at 0.61x its fp32 export's rate (README: "Without AMX"). Where the CPU lacks bf16
instructions altogether oneDNN emulates it, slower still. Off x86 (ARM's bf16 instructions) oneDNN's own check
decides, and so where torch cannot name the x86 instructions.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys

ARCH_REQ_XCOMP_PERM = 0x1023  # arch_prctl: ask for an extended state component (asm/prctl.h)
XFEATURE_XTILEDATA = 18  # AMX's tile data
SYS_ARCH_PRCTL = 158  # x86_64


def x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def linux_x86_64() -> bool:
    """Where a process must ask the kernel for AMX (and where ``--without-amx`` can refuse it)."""
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def cpu_flags() -> dict[str, bool | None]:
    """What torch's CPU checks say about bf16: native instructions (AVX512-BF16, AMX tiles: the CPU's flags, granted
    or not) and oneDNN's own check, which also says yes on plain AVX512, where it *emulates* bf16 (None: this torch
    cannot tell)."""
    import torch

    def ask(fn):
        try:
            return bool(fn())
        except Exception:  # pragma: no cover - depends on the torch build
            return None

    cpu = getattr(torch, "cpu", None)
    return {"avx512_bf16": ask(getattr(cpu, "_is_avx512_bf16_supported", None)),
            "amx": ask(getattr(cpu, "_is_amx_tile_supported", None)),
            "onednn_bf16": ask(lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported())}


@functools.lru_cache(maxsize=1)
def amx_granted() -> bool:
    """Whether the kernel lets this process use AMX tiles (asked as oneDNN asks; asking again is harmless). Outside
    Linux on x86_64 there is nothing to ask: True. False on a CPU without AMX."""
    if not linux_x86_64():
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc to ask
        return False


def fast_bf16() -> bool:
    """True where the CPU computes bf16 faster than float32: on x86, AMX granted to this process (the module
    docstring); elsewhere, or where torch cannot name the x86 instructions, oneDNN's own check."""
    flags = cpu_flags()
    if not x86() or (flags["avx512_bf16"] is None and flags["amx"] is None):
        return bool(flags["onednn_bf16"])
    return bool(flags["amx"]) and amx_granted()


def cpu_facts() -> str:
    """One line for reports: the CPU's bf16 instructions as torch sees them, and whether AMX is granted."""
    flags = cpu_flags()
    facts = [f"{k}={'?' if v is None else v}" for k, v in flags.items()]
    if flags["amx"]:
        facts.append(f"amx_granted={amx_granted()}")
    return ", ".join(facts)
