"""Helpers for the worker tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRIPTED_ENGINE = Path(__file__).resolve().parent / "scripted_engine.py"


def scripted_command(mode: str):
    """A command_factory running scripted_engine.py in `mode`."""

    def factory(spec, spec_path, out_dir, events_path) -> list[str]:
        return [
            sys.executable,
            str(SCRIPTED_ENGINE),
            mode,
            str(spec_path),
            str(out_dir),
            str(events_path),
        ]

    return factory


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
