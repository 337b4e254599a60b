"""Fixtures shared by every test folder: tiny real models and data, built offline."""

from __future__ import annotations

import faulthandler
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from jobfiles import make_sentiment_csv, make_tiny_bert  # noqa: E402

# After the last test Python joins every non-daemon thread a test left behind; one that
# never ends would hang `make test` silently until CI's own limit. Past this many seconds
# of shutdown, print every thread's stack and exit 1, so the hang is a failure that names it.
SHUTDOWN_LIMIT_S = 120


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    faulthandler.dump_traceback_later(SHUTDOWN_LIMIT_S, exit=True)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def sentiment_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sentiment")
    return make_sentiment_csv(root / "train.csv", 128), make_sentiment_csv(root / "eval.csv", 64, 1)
