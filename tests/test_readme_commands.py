"""Every `vretrver` command the README shows is a valid command of this version.

The README's runnable-here commands (set-up, the demo, the tests) run for real in their own tests; the ones
that need a GPU or benchmark files are checked here as far as a machine without them can: the command
line parses, and for `vretrver eval` the settings it builds pass the same checks a real run starts with.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def readme_commands() -> list[str]:
    """`vretrver ...` commands in the README's code blocks (lines joined) and complete ones quoted inline."""
    lines = README.read_text(encoding="utf-8").splitlines()
    code, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            code.append(line.strip())
        else:
            code.append("")
    commands, current = [], ""
    for line in code:
        current = f"{current} {line}".strip() if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        words = shlex.split(current, comments=True) if current else []
        while words and ENV.match(words[0]):
            words.pop(0)
        if words and words[0] in ("vretrver", ".venv/bin/vretrver"):
            commands.append(shlex.join(words[1:]))
        current = ""
    # Complete commands quoted inline in the text (those naming their output folder or file).
    text = README.read_text(encoding="utf-8")
    for span in re.findall(r"`((?:\.venv/bin/)?vretrver [^`]+)`", text):
        words = shlex.split(" ".join(span.split()))
        if "--out" in words:
            commands.append(shlex.join(words[1:]))
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_the_commands_users_run():
    assert len(COMMANDS) >= 10
    shown = " ".join(COMMANDS)
    for needle in ("--profile official", "--window-mode official", "--parquet-prompts", "demo"):
        assert needle in shown


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_is_valid(command: str, monkeypatch, tmp_path):
    import vretrver.evaluate as evaluate_mod
    from vretrver.cli import build_parser

    argv = shlex.split(command)
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"README command does not parse (exit {e.code}): vretrver {command}")
    if argv[0] != "eval":
        return

    class Built(Exception):
        pass

    def capture(cfg, out, progress=True):
        cfg.check()
        raise Built(cfg)

    monkeypatch.setattr(evaluate_mod, "evaluate", capture)
    with pytest.raises(Built):
        ns.func(ns)
