"""central.supervisor.output: the children's lines behind a name column, through a real
Supervisor running small `python -c` children."""

from __future__ import annotations

import io
import re

from central.supervisor.runner import Supervisor
from central.supervisor.specs import ChildSpec
from tests.utils.child_processes import FAST, lines, py, run, until


def test_output_lines_are_prefixed_with_a_fixed_width_name() -> None:
    out = io.StringIO()
    specs = [
        ChildSpec(
            "a",
            py("""
            import sys, time
            print("hello from a", flush=True)
            print("warning from a", file=sys.stderr, flush=True)
            sys.stdout.write("10%\\r50%\\r100%\\n")
            sys.stdout.write("no newline at the end")
            """),
        ),
        ChildSpec("long-name", py("print('x'); import time; time.sleep(30)")),
    ]
    sup = Supervisor(specs, color=False, out=out, policy=FAST)

    async def scenario() -> None:
        await sup.start()
        try:
            await until(lambda: "no newline at the end" in out.getvalue())
            await until(lambda: "long-name | x" in out.getvalue())
        finally:
            await sup.stop()

    run(scenario)
    got = lines(out)
    # width = the longest name ("long-name", 9); stdout and stderr both come through
    assert "a         | hello from a" in got
    assert "a         | warning from a" in got
    assert "a         | 100%" in got  # a \r progress bar shows its last state
    assert "a         | no newline at the end" in got
    assert "long-name | x" in got
    assert any(line.startswith("sdserve   | started a (pid ") for line in got)
    assert "\x1b[" not in out.getvalue()
    assert all(re.match(r"^[a-z-]+ +\| ", line) for line in got)


def test_color_is_used_only_when_asked_or_on_a_tty() -> None:
    def output(color: bool | None) -> str:
        out = io.StringIO()
        sup = Supervisor([ChildSpec("a", py("print('hi')"))], color=color, out=out)

        async def scenario() -> None:
            await sup.start()
            try:
                await until(lambda: "hi" in out.getvalue())
            finally:
                await sup.stop()

        run(scenario)
        return out.getvalue()

    coloured = output(True)
    assert "\x1b[36ma       |\x1b[0m hi" in coloured
    assert "\x1b[" not in output(None)  # a StringIO is not a TTY
    assert "\x1b[" not in output(False)
