"""Helpers for the dashboard tests (fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from jobfiles import write_text_job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef"}


def user_client(cluster, name: str):
    from tunefleet.client import Client

    return Client(cluster.address, token=TOKENS[name])


def long_job(folder: Path, model: Path, data, name: str = "long-run") -> Path:
    """Runs long enough to watch (and then cancel): many short epochs, a point each 2 steps."""
    return write_text_job(
        folder,
        model,
        data,
        name=name,
        train={"epochs": 200, "batch_size": 16, "precision": "no", "log_every_steps": 2},
    )
