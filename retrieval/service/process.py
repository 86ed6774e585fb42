"""Run ``python -m retrieval serve`` in a child process on a free loopback port (tests, load benchmark)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Start the service over ``root`` and wait until it answers; ``client`` is an httpx client for it.

    >>> with ServerProcess(root, "--workers", "2", key=KEY) as server:
    ...     server.client.post("/v1/domains/scifact/search", json={"query": "..."})
    """

    def __init__(self, root: str | os.PathLike, *args: str, key: str | None = None, log: str | os.PathLike | None = None,
                 timeout: float = 180.0):
        import httpx

        self.root, self.port = Path(root), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("RETRIEVAL_API_KEY", None)
        if key:
            env["RETRIEVAL_API_KEY"] = key
        self.log_path = Path(log) if log else self.root / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        repo = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen([sys.executable, "-m", "retrieval", "serve", "--root", str(self.root), "--port",
                                      str(self.port), "--log-level", "warning", *args],
                                     cwd=repo, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=120)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                self.client.get("/healthz")
                return
            except httpx.TransportError:
                if time.time() > deadline:
                    self.kill()
                    raise RuntimeError(f"the server did not start in {timeout:.0f} s:\n{self.output()}") from None
                time.sleep(0.2)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self._finish()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._finish()

    def _finish(self) -> None:
        self.proc.wait()
        self.client.close()
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.stop()
