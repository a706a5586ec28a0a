"""Run a real server process for tests and benchmarks: ``with ServerProcess(["--model", ...]) as server: ...``.

The server runs as ``python -m gcl_zoo.cli serve`` on a free port of 127.0.0.1, exactly as a user starts it;
``start`` returns once ``/ready`` answers 200, and a server that dies first raises with the tail of its log.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

__all__ = ["ServerProcess", "free_port"]

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A ``gcl-zoo serve`` subprocess with ``args``; its output goes to a log file (``log()`` reads it)."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, ready_timeout_s: float = 180.0):
        self.args = list(args)
        self.env = env or {}
        self.ready_timeout_s = ready_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="gcl-serve-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gcl_zoo.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                *self.args]

    def start(self) -> ServerProcess:
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=2) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    message = f"the server exited with code {self.proc.returncode}:\n{self.log()[-4000:]}"
                    self.stop()
                    raise RuntimeError(message)
                try:
                    if http.get(f"{self.url}/ready").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        message = f"the server was not ready within {self.ready_timeout_s:g} s:\n{self.log()[-4000:]}"
        self.stop()
        raise TimeoutError(message)

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 15 s) and remove its log file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
