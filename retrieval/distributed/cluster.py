"""Connecting to a Ray cluster: the same code on a laptop, a local cluster, or a real one, by changing an address.

``address``:

- ``"local"``: start a Ray cluster inside this process (``ray.init``), on this machine's cores, ended at exit;
- ``"auto"``: the cluster ``ray start --head`` started on this machine (or ``$RAY_ADDRESS``);
- ``"host:port"``: a cluster's head node (its GCS address), this process joining as a driver;
- ``"ray://host:port"``: Ray Client, from outside the cluster.

Every node must have this library and its dependencies installed (the same virtual environment or image), and a
path that a sharded index or pipeline folder is read from or written to must be one every node reaches (a shared
file system); models and corpora travel through Ray's object store. Ray is optional: ``pip install
'retrieval[ray]'``.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

# A local cluster listens on loopback only. Ray turns 127.0.0.1 into the machine's network address, so another
# loopback address is given (Linux routes all of 127.0.0.0/8 to the loopback device).
LOOPBACK = "127.0.0.2"

ADDRESS_HELP = ("Ray cluster: 'local' (start one in this process), 'auto' (the one `ray start --head` started here), "
                "'host:port' (a head node) or 'ray://host:port' (Ray Client)")


FAULT_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL")


@contextlib.contextmanager
def keep_fault_handlers():
    """Give back, after ``ray.init`` or ``ray.shutdown`` (the block), the fault-signal handlers this process had.

    Both install handlers of their own for SIGSEGV and the like (absl's failure handler, Python's faulthandler). A
    JVM in this process (Lucene through Pyserini) raises SIGSEGV on purpose and handles it itself (implicit null
    checks): with Ray's handler in the way, the next one kills the process — seen as a segmentation fault in the
    middle of a Lucene search after a Ray cluster was started or ended. A handler that was there before (the
    JVM's, or pytest's faulthandler) is put back; where there was none, Ray's stays. A JVM started after Ray
    installs its own.
    """
    try:
        libc = ctypes.CDLL(None) if sys.platform.startswith(("linux", "darwin")) else None
    except OSError:
        libc = None
    saved = {}
    for name in FAULT_SIGNALS if libc is not None else ():
        action = ctypes.create_string_buffer(256)  # struct sigaction, kept as it is; its handler comes first
        if libc.sigaction(getattr(signal, name), None, action) == 0 and any(action.raw[:ctypes.sizeof(ctypes.c_void_p)]):
            saved[name] = action
    try:
        yield
    finally:
        for name, action in saved.items():
            libc.sigaction(getattr(signal, name), action, None)


def live_nodes() -> list[dict]:
    """The cluster's live nodes (``ray.nodes()``), in a fixed order (by node id)."""
    return sorted((n for n in ray_module().nodes() if n.get("Alive")), key=lambda n: n["NodeID"])


def ray_module():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("running on a Ray cluster needs Ray: pip install 'retrieval[ray]' (ray[data])") from None
    return ray


def check_address(address: str) -> str:
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"a Ray address is needed: {ADDRESS_HELP}; got {address!r}")
    address = address.strip()
    if address not in ("local", "auto") and ":" not in address:
        raise ValueError(f"{address!r} is not a Ray address: {ADDRESS_HELP}")
    return address


def connect(address: str = "local", num_cpus: int | None = None) -> bool:
    """Join (or, for ``"local"``, start) the Ray cluster at ``address``; True if this call did it, False if this
    process was connected already. ``num_cpus`` limits a local cluster (default: every core)."""
    address = check_address(address)
    ray = ray_module()
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address == "local":
        with keep_fault_handlers():  # address="local": a new cluster, even where `ray start` runs one
            ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK if sys.platform == "linux" else None,
                     **kwargs)
        return True
    if num_cpus is not None:
        raise ValueError("num_cpus sizes a local cluster only; a running cluster has the CPUs it was started with")
    try:
        with keep_fault_handlers():
            ray.init(address=address, **kwargs)
    except ConnectionError as e:
        if "AuthToken" in f"{e} {e.__cause__}":
            raise ConnectionError(f"the Ray cluster at {address!r} refused this process's token: a cluster started "
                                  f"with token authentication takes drivers that run with RAY_AUTH_MODE=token and "
                                  f"its token (~/.ray/auth_token or $RAY_AUTH_TOKEN)") from None
        raise ConnectionError(f"no Ray cluster answers at {address!r} ({str(e).strip().splitlines()[-1]}); start one "
                              f"with `ray start --head` (then use 'auto'), or use 'local'") from None
    return True

