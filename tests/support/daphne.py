"""A real daphne process serving Parley on a loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
# Each daphne's output is kept here, for reading after a failure (CI keeps the folder).
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_url() -> str:
    """The URL of the database the test session is using (the test database)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    if connection.vendor == "postgresql":
        user = s.get("USER") or ""
        password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        return (
            f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"
        )
    raise RuntimeError(f"no URL for database vendor {connection.vendor}")


class DaphneServer:
    """``daphne config.asgi:application`` in a subprocess; its log is kept for failures."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        cwd: Path = ROOT,
        tls: tuple[Path, Path] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.cwd = cwd  # another checkout of Parley, for the benchmark's before/after
        # (key file, certificate file): daphne terminates TLS itself (https, wss).
        self.tls = tls
        # Where it listens: loopback, unless a test needs a client from another address.
        self.host = host
        self.port = free_port()
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env}
        self.lines: list[str] = []
        self._ready: queue.Queue[str] = queue.Queue()
        self._logged = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> DaphneServer:
        if self.tls is None:
            listen = ["-b", self.host, "-p", str(self.port)]
        else:
            key, cert = self.tls
            listen = ["-e", f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", *listen, "config.asgi:application"],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        # A queue per start: a server can be stopped and started again (same port).
        self._ready = queue.Queue()
        threading.Thread(
            target=self._pump, args=(self.proc.stdout, self._ready), daemon=True
        ).start()
        # Daphne logs this line once its socket listens: wait for it, not for a delay.
        try:
            line = self._ready.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError("daphne did not start:\n" + self.log()) from None
        if line == "EOF":
            raise RuntimeError("daphne exited:\n" + self.log())
        return self

    def _pump(self, stream: IO[str], ready: queue.Queue[str]) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        with open(ARTIFACTS / f"daphne-{self.port}.log", "a") as log:
            for line in stream:
                log.write(line)
                log.flush()
                self._line(line, ready)
        ready.put("EOF")

    def _line(self, line: str, ready: queue.Queue[str]) -> None:
        with self._logged:
            self.lines.append(line.rstrip("\n"))
            self._logged.notify_all()
        if "Listening on TCP address" in line:
            ready.put(line)

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        """Block until the server logs a line containing ``needle``; return the line."""
        with self._logged:
            found: list[str] = []

            def seen() -> bool:
                found[:] = [line for line in self.lines if needle in line]
                return bool(found)

            if not self._logged.wait_for(seen, timeout):
                raise TimeoutError(f"daphne never logged {needle!r}:\n{self.log()}")
            return found[0]

    def log(self) -> str:
        return "\n".join(self.lines[-200:])

    def kill(self) -> None:
        """Die without cleaning up, like a crashed process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
