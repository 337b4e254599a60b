"""The members of a multi-node job claim one shared output folder at the same moment; none
may be refused for what another member just wrote (the owner file itself)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from tunefleet.worker import job_folder


def _claim(args: tuple[str, str, str]) -> str | None:
    out_dir, job_id, root = args
    return job_folder.claim(Path(out_dir), job_id, artifacts_root=Path(root))


def test_members_claiming_one_folder_at_once_are_never_refused(tmp_path):
    root = tmp_path / "artifacts"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        for i in range(150):
            out = tmp_path / "shared" / f"run-{i}"
            refused = pool.map(_claim, [(str(out), f"job-{i}", str(root))] * 4)
            assert refused == [None] * 4, refused
            assert job_folder.owner_of(out) == f"job-{i}"


def test_another_jobs_claim_still_wins_the_race(tmp_path):
    root = tmp_path / "artifacts"
    out = tmp_path / "shared" / "run"
    assert job_folder.claim(out, "job-a", artifacts_root=root) is None
    (out / "checkpoints").mkdir()
    assert "belongs to job job-a" in job_folder.claim(out, "job-b", artifacts_root=root)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine\n")
    assert "no job owns it" in job_folder.claim(plain, "job-c", artifacts_root=root)
