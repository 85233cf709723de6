"""`iared-edge serve` in a child process: started on free loopback ports, waited for until model
"iared" is ready, stopped with SIGTERM (or killed). For tests, benchmarks and supervisors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from . import protocol


def free_ports(n: int, host: str = "127.0.0.1") -> List[int]:
    """n TCP ports free on `host` now (bound and released together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServerProcess:
    """One `iared-edge serve` child. `args`: its extra options (--model, --policy, ...)."""

    def __init__(self, args: Sequence[str] = (), host: str = "127.0.0.1", log_path: Optional[str] = None):
        self.args, self.host, self.log_path = list(args), host, log_path
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3, host)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, timeout_s: float = 120.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "iared_edge.cli", "serve", "--address", self.host]
        cmd += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        cmd += ["--metrics-port", str(self.metrics_port), *self.args]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if log is not subprocess.DEVNULL:
            log.close()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.kill()  # not left holding the ports
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        from tritonclient.grpc import InferenceServerClient

        client = InferenceServerClient(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    code = self.proc.returncode
                    raise RuntimeError(f"iared-edge serve exited with {code} before it was ready{self._log()}")
                try:
                    if client.is_model_ready(protocol.MODEL, client_timeout=2.0):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        raise TimeoutError(f"iared-edge serve was not ready in {timeout_s:g} s{self._log()}")

    def _log(self) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, errors="replace") as f:
            return " (log tail:\n" + "".join(f.readlines()[-20:]) + ")"

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, and its exit status (SIGKILL after `timeout_s`)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the server and everything it started (tritonserver, the Python backend stub)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
