"""`broadcasts --help` and every command's help: the operator's order, wrapped to the terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

BROADCASTS = str(Path(sys.executable).with_name("broadcasts"))
# Day to day first, then standing the service up, then the test double.
OPERATOR_ORDER = ["db", "event", "send-event", "status", "replay", "trigger", "link-test", "server", "bootstrap",
                  "serve", "dispatcher", "webhook", "simulator"]
HELP_PAGES = [[], ["db", "upgrade"], ["event", "create"], *([name] for name in OPERATOR_ORDER[2:])]


def help_text(args: list[str], columns: int) -> str:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    result = subprocess.run([BROADCASTS, *args, "--help"], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_commands_are_listed_in_the_order_an_operator_uses_them():
    text = help_text([], 80)
    panel = text[text.index("Commands"):]
    listed = re.findall(r"^│ (\S+)", panel, flags=re.MULTILINE)
    assert [name for name in listed if name in OPERATOR_ORDER] == OPERATOR_ORDER
    assert listed == OPERATOR_ORDER  # a new command must be given its place


@pytest.mark.parametrize("args", HELP_PAGES, ids=lambda a: " ".join(a) or "broadcasts")
def test_help_fits_an_80_column_terminal(args):
    lines = help_text(args, 80).splitlines()
    assert max(len(line) for line in lines) <= 80


@pytest.mark.parametrize("args", HELP_PAGES, ids=lambda a: " ".join(a) or "broadcasts")
def test_help_text_is_wrapped_by_the_terminal_not_by_line_breaks_in_the_source(args):
    """On a wide terminal nothing needs wrapping, so a second line of one paragraph or of one
    table row can only be a line break carried over from a docstring."""
    lines = help_text(args, 300).splitlines()
    for before, line in zip(lines, lines[1:]):
        if line.startswith("│"):  # a row of a panel: continuations start in a blank first column
            assert not line.startswith("│      "), f"a row broken in two:\n{before}\n{line}"
        elif not line.startswith(("╭", "╰")) and not before.startswith(("╭", "╰", "│")):
            assert not (before.strip() and line.strip()), f"a paragraph broken in two:\n{before}\n{line}"
