"""Helpers for the deployment tests: reading Dockerfiles and checking that the command
lines baked into deployment files are ones `ftctl` accepts."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

from tunefleet.client.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each logical line, continuations joined, comments out."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def exec_form(arguments: str) -> list[str]:
    """The list of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD (JSON array)."""
    return json.loads(arguments)


def parse_ftctl(argv: list[str]):
    """argparse's namespace for `ftctl ARGV`, or an AssertionError quoting argparse's complaint."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"ftctl rejects {shlex.join(argv)}:\n{stderr.getvalue()}") from None
