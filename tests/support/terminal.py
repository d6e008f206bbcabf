"""A program in a real pseudo-terminal (pexpect), with its screen rendered by a terminal
emulator (pyte), so tests assert what a person would see, not raw escape sequences.

Waiting reads the program's output as it comes (``select`` with a timeout inside
pexpect), so there is no sleeping: each wait ends as soon as the screen shows the thing.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pexpect
import pyte


class _Screen(pyte.Screen):
    """A screen that answers the program's queries (cursor position, device status) as a
    real terminal does: prompt_toolkit asks where the cursor is before drawing its status
    line, and leaves the line out when nobody answers."""

    def __init__(self, cols: int, rows: int) -> None:
        super().__init__(cols, rows)
        self.reply: Callable[[str], object] | None = None

    def write_process_input(self, data: str) -> None:
        if self.reply is not None:
            self.reply(data)


ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\r")


class Terminal:
    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        rows: int = 40,
        cols: int = 120,
    ) -> None:
        full_env = {
            **os.environ,
            "TERM": "xterm-256color",
            "TZ": "UTC",
            **(env or {}),
        }
        self.screen = _Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.output = bytearray()
        self.eof = False
        self.child = pexpect.spawn(
            sys.executable,
            list(args),
            env=full_env,
            cwd=str(cwd) if cwd else None,
            dimensions=(rows, cols),
        )
        self.screen.reply = self.child.send

    def _read(self, timeout: float) -> None:
        try:
            data = self.child.read_nonblocking(65536, timeout=timeout)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            self.eof = True
            return
        self.output += data
        self.stream.feed(data)

    def display(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def plain(self) -> str:
        """Everything the program wrote, without escape sequences."""
        return ANSI.sub(b"", bytes(self.output)).decode("utf-8", "replace")

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float = 20.0, what: str = ""
    ) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.display()
            if predicate(screen):
                return screen
            if self.eof:
                raise AssertionError(f"the program exited before {what}:\n{self.plain()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the screen never showed {what}:\n{screen}")
            self._read(min(left, 1.0))

    def wait_text(self, text: str, timeout: float = 20.0) -> str:
        return self.wait_for(lambda screen: text in screen, timeout, repr(text))

    def send(self, data: str) -> None:
        self.child.send(data)

    def wait_exit(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the program did not exit:\n{self.display()}")
            self._read(min(left, 1.0))
        self.child.wait()
        self.child.close()
        status = self.child.exitstatus
        return status if status is not None else -(self.child.signalstatus or 0)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
