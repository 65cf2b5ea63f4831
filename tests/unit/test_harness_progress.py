"""Progress output: a redrawn line on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import io

from aura_node.harness.progress import Progress, format_status


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_format_status() -> None:
    assert format_status("chaos", 125.9, {"ok": 3, "rate": 2.25, "phase": "heal"}) == (
        "[chaos 02:05] ok 3 rate 2.2 phase heal"
    )


def test_plain_mode_prints_periodic_lines_only() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("run", stream=out, tty=False, interval=5.0, clock=clock)
    p.incr("ok")
    clock.t += 1
    p.incr("ok")
    assert out.getvalue() == ""  # nothing until the interval passed
    clock.t += 5
    p.incr("ok")
    p.step("an event")
    p.close()
    assert out.getvalue().splitlines() == [
        "[run 00:06] ok 3",
        "an event",
        "[run 00:06] ok 3",
    ]
    assert "\r" not in out.getvalue()


def test_tty_mode_redraws_in_place_and_keeps_steps() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress("demo", stream=out, tty=True, clock=clock) as p:
        p.set(ok=0)
        clock.t += 1
        p.incr("ok")
        p.step("ping d1 -> d2")
    text = out.getvalue()
    assert "\r\x1b[2K" in text  # the status line is cleared before being redrawn
    assert "ping d1 -> d2\n" in text
    assert text.endswith("[demo 00:01] ok 1\n")
