"""Progress for long runs (demo, chaos, load): a live status line or plain periodic lines.

On a terminal, one status line (``[demo 00:04] pings 2/3 ok 2 failed 0``) is redrawn in place
at most ``redraw_hz`` times a second; a ``step`` message is printed above it and the line is
drawn again underneath. When the stream is not a terminal (CI logs, pipes), carriage returns
would make a mess, so the same status is printed as an ordinary line every ``interval``
seconds and each ``step`` is one line. The clock is injectable so the formatting is tested
without sleeping.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

Count = int | float | str


def format_status(title: str, elapsed: float, counts: dict[str, Count]) -> str:
    """``[title mm:ss] key value key value ...``; floats with one decimal."""
    minutes, seconds = divmod(int(elapsed), 60)
    parts = [f"[{title} {minutes:02d}:{seconds:02d}]"]
    for key, value in counts.items():
        shown = f"{value:.1f}" if isinstance(value, float) else str(value)
        parts.append(f"{key} {shown}")
    return " ".join(parts)


class Progress:
    """See the module doc. Use as a context manager; ``close`` prints the final status."""

    def __init__(
        self,
        title: str,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval: float = 5.0,
        redraw_hz: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.title = title
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self.min_redraw = 1.0 / redraw_hz
        self.clock = clock
        self.counts: dict[str, Count] = {}
        self._t0 = clock()
        self._last_emit = self._t0
        self._drawn = False
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return self.clock() - self._t0

    def status_line(self) -> str:
        return format_status(self.title, self.elapsed, self.counts)

    def set(self, **counts: Count) -> None:
        self.counts.update(counts)
        self._tick()

    def incr(self, key: str, n: int = 1) -> None:
        current = self.counts.get(key, 0)
        self.counts[key] = (current if isinstance(current, int | float) else 0) + n
        self._tick()

    def step(self, message: str) -> None:
        """A line of its own (``message``), kept in the scrollback in both modes."""
        if self.tty:
            self._clear()
            self.stream.write(message + "\n")
            self._draw()
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def _tick(self) -> None:
        now = self.clock()
        if self.tty:
            if now - self._last_emit >= self.min_redraw or not self._drawn:
                self._draw()
        elif now - self._last_emit >= self.interval:
            self.stream.write(self.status_line() + "\n")
            self.stream.flush()
            self._last_emit = now

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False

    def _draw(self) -> None:
        self._clear()
        self.stream.write(self.status_line())
        self.stream.flush()
        self._drawn = True
        self._last_emit = self.clock()

    def close(self) -> None:
        """Print the final status as a normal line (both modes). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._clear()
        self.stream.write(self.status_line() + "\n")
        self.stream.flush()
