"""Runs inferline's services as child processes on one machine (what `inferline up` starts).

Each service is `python -m <package>` configured through its documented environment variables;
its log goes to <log_dir>/<name>.log. Children get SIGTERM (they drain) and are killed only if they
do not exit in time.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class ServiceFailed(RuntimeError):
    """A child exited or never became healthy; the message ends with its last log lines."""


@dataclass
class ServiceProcess:
    name: str
    module: str
    env: dict[str, str]
    log_dir: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args],
                                         env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise ServiceFailed(f"{self.name} exited (status {code}); last log lines:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (the service drains), SIGKILL if it has not exited in time; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return None if self.proc is None else self.proc.returncode


def wait_healthy(service: ServiceProcess, address: str, timeout_s: float = 120.0) -> None:
    """Poll grpc.health.v1 until SERVING, failing early if the process dies."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            service.check_alive()
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise ServiceFailed(f"{service.name} not healthy on {address} after {timeout_s:.0f} s; last log "
                                    f"lines:\n{service.log_tail()}")
            time.sleep(0.2)
