"""The supervisor's output: every child's lines, and its own, behind a name column.

Each line is written as ``name | text`` with the names padded to one width and, when
wanted, coloured; a carriage-return progress bar shows as its last state; every write is
flushed, so a file or a pipe gets the lines as they come.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import MutableSequence, Sequence
from typing import TextIO

OWN_NAME = "sdserve"
_COLORS = ("36", "33", "32", "35", "34", "91", "96", "93", "92", "95")
_OWN_COLOR = "1"
_RESET = "\x1b[0m"
_MAX_LINE_BYTES = 64 * 1024


def color_wanted(out: TextIO) -> bool:
    """Colour only on a TTY, and not when NO_COLOR is set or TERM is dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


class PrefixedOutput:
    """Writes lines of the named children, and of the supervisor, to one output."""

    def __init__(self, names: Sequence[str], out: TextIO, *, color: bool | None = None) -> None:
        self._out = out
        self.color = color_wanted(out) if color is None else color
        self._width = max(len(name) for name in [*names, OWN_NAME])
        self._labels = {
            name: self._label(name, _COLORS[i % len(_COLORS)]) for i, name in enumerate(names)
        }
        self._own_label = self._label(OWN_NAME, _OWN_COLOR)
        self._broken = False

    def _label(self, name: str, color: str) -> str:
        text = f"{name:<{self._width}} |"
        return f"\x1b[{color}m{text}{_RESET}" if self.color else text

    def write(self, text: str) -> None:
        """Write text as is (no prefix), e.g. a banner; flushed at once."""
        if self._broken:
            return
        try:
            self._out.write(text)
            self._out.flush()
        except (BrokenPipeError, ValueError):
            # The reader went away (a closed pipe): the children keep running unprinted.
            self._broken = True

    def log(self, message: str, *, error: bool = False) -> None:
        """A line from the supervisor itself, in the same prefixed column."""
        if error and self.color:
            message = f"\x1b[1;31m{message}{_RESET}"
        for line in message.splitlines() or [""]:
            self.write(f"{self._own_label} {line}\n")

    def emit(self, name: str, raw: bytes, tail: MutableSequence[str]) -> None:
        """Write one line of child ``name``, and keep it in ``tail``."""
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if "\r" in text:  # a progress bar redrawn with \r: show what a terminal would
            text = next((part for part in reversed(text.split("\r")) if part), "")
        tail.append(text)
        self.write(f"{self._labels[name]} {text}\n")

    async def pump(
        self, name: str, stream: asyncio.StreamReader, tail: MutableSequence[str]
    ) -> None:
        """Write the lines of child ``name`` from ``stream`` until it ends."""
        buffer = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self.emit(name, line, tail)
            while len(buffer) > _MAX_LINE_BYTES:
                self.emit(name, buffer[:_MAX_LINE_BYTES], tail)
                buffer = buffer[_MAX_LINE_BYTES:]
        if buffer:
            self.emit(name, buffer, tail)
