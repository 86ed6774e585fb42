"""``--without-amx``: the speed benchmarks run as on a CPU without AMX, on an AMX machine.

Linux grants AMX to a process only when it asks (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, what oneDNN in torch and in
OpenVINO does before its first AMX kernel). A seccomp filter makes that request fail, so both fall back to the
kernels they run on CPUs without AMX (AVX512-BF16 / AVX512-VNNI on the same cores), and ``retrieval.cpu`` sees AMX
refused, as on such a CPU. OpenVINO's release builds have no switch for this (its ISA cap is a debug-build
option). The filter holds for the rest of the process and for the processes it starts.
"""

from __future__ import annotations

import ctypes
import struct

from retrieval.cpu import ARCH_REQ_XCOMP_PERM, SYS_ARCH_PRCTL, XFEATURE_XTILEDATA, amx_granted, linux_x86_64

ARCH_GET_XCOMP_PERM = 0x1022
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
AUDIT_ARCH_X86_64 = 0xC000003E
_LOAD, _JUMP_IF_EQUAL, _RETURN = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
_ALLOW, _EPERM = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM


def _instruction(code: int, if_true: int, if_false: int, k: int) -> bytes:
    return struct.pack("HBBI", code, if_true, if_false, k)


def _filter() -> bytes:
    """Allow every system call but arch_prctl(ARCH_REQ_XCOMP_PERM, ...), which fails with EPERM (the offsets are
    struct seccomp_data's: the call's number at 0, the architecture at 4, the first argument at 16)."""
    return b"".join([
        _instruction(_LOAD, 0, 0, 4), _instruction(_JUMP_IF_EQUAL, 1, 0, AUDIT_ARCH_X86_64), _instruction(_RETURN, 0, 0, _ALLOW),
        _instruction(_LOAD, 0, 0, 0), _instruction(_JUMP_IF_EQUAL, 1, 0, SYS_ARCH_PRCTL), _instruction(_RETURN, 0, 0, _ALLOW),
        _instruction(_LOAD, 0, 0, 16), _instruction(_JUMP_IF_EQUAL, 0, 1, ARCH_REQ_XCOMP_PERM),
        _instruction(_RETURN, 0, 0, _EPERM),
        _instruction(_RETURN, 0, 0, _ALLOW),
    ])


def deny_amx() -> None:
    """Refuse AMX to this process from now on. Raises where that cannot be done (not Linux on x86_64), or comes too
    late (AMX already granted: call this before the first torch or OpenVINO computation)."""
    if not linux_x86_64():
        raise RuntimeError("--without-amx works on Linux on x86_64 only")
    libc = ctypes.CDLL(None, use_errno=True)
    granted = ctypes.c_uint64(0)
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(granted)) == 0 and \
            granted.value & (1 << XFEATURE_XTILEDATA):
        raise RuntimeError("AMX was already granted to this process: --without-amx must come before any computation")
    code = _filter()
    program = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(code) // 8, ctypes.addressof(program))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "--without-amx: the kernel refused the seccomp filter")
    amx_granted.cache_clear()  # asked again, now under the filter
    if amx_granted():  # pragma: no cover - a kernel bug
        raise RuntimeError("--without-amx: AMX is still granted after the filter")
