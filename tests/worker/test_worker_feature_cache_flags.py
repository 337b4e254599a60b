"""The worker's shared feature cache flags reach the training process's environment, where
the engine reads them (worker/engine/shared_features.py)."""

from __future__ import annotations

import argparse
import sys

import pytest
from coordinator_helpers import make_spec

from tunefleet.v1 import job_pb2
from tunefleet.worker.command_line import (
    WorkerFlagError,
    add_worker_arguments,
    check_worker_arguments,
    daemon_from_args,
)
from tunefleet.worker.engine.shared_features import DIR_ENV, MAX_GB_ENV
from tunefleet.worker.job_runner import JobRunner


def _daemon(tmp_path, *flags: str):
    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    args = parser.parse_args(
        ["--coordinator", "127.0.0.1:1", "--artifacts", str(tmp_path / "a"), *flags]
    )
    check_worker_arguments(args)
    return daemon_from_args(args)


def test_defaults_under_the_work_dir_else_the_artifacts(tmp_path):
    assert _daemon(tmp_path).engine_env == {
        DIR_ENV: str(tmp_path / "a" / ".feature-cache"),
        MAX_GB_ENV: "10.0",
    }
    work = _daemon(tmp_path, "--work-dir", str(tmp_path / "w"))
    assert work.engine_env[DIR_ENV] == str(tmp_path / "w" / "feature-cache")
    chosen = _daemon(tmp_path, "--feature-cache-dir", str(tmp_path / "c"),
                     "--feature-cache-max-gb", "2.5")  # fmt: skip
    assert chosen.engine_env == {DIR_ENV: str(tmp_path / "c"), MAX_GB_ENV: "2.5"}
    assert _daemon(tmp_path, "--feature-cache-max-gb", "0").engine_env == {}  # off
    with pytest.raises(WorkerFlagError, match="--feature-cache-max-gb must be >= 0"):
        _daemon(tmp_path, "--feature-cache-max-gb", "-1")


def test_a_work_dir_that_does_not_exist_yet_is_made_or_refused_with_its_flag(tmp_path):
    """Made at start (jobs ran in it and each failed on the missing folder); one that
    cannot be made stops the worker with the flag's name."""
    _daemon(tmp_path, "--work-dir", str(tmp_path / "new" / "work"))
    assert (tmp_path / "new" / "work").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(WorkerFlagError, match="--work-dir: cannot create .*file/work"):
        _daemon(tmp_path, "--work-dir", str(tmp_path / "file" / "work"))


def test_the_training_process_gets_them(tmp_path):
    seen = tmp_path / "seen.txt"
    code = f"import os; open({str(seen)!r}, 'w').write(os.environ[{DIR_ENV!r}])"
    runner = JobRunner(
        job_pb2.Job(id="job-0000cafe", spec=make_spec("env"), attempt=1),
        1,
        worker_id="w-test",
        out_dir=tmp_path / "out",
        command_factory=lambda *_: [sys.executable, "-c", code],
        engine_env={DIR_ENV: "/somewhere/feature-cache"},
    )
    runner.run(lambda events: True)
    assert seen.read_text() == "/somewhere/feature-cache"
