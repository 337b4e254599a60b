"""Checkpoints through the artifact storage (worker/checkpoint_sync.py), against a real
file:// store and checkpoint folders laid out as the engine writes them (no torch here:
tests/cluster/test_checkpoint_upload.py runs the real engine across two workers)."""

from __future__ import annotations

import json
import socket

from tunefleet.worker.artifact_store import ArtifactStore
from tunefleet.worker.checkpoint_sync import MARKER, STAGING, CheckpointSync


def write_checkpoint(out_dir, step: int, payload: bytes = b"") -> None:
    """out_dir/checkpoints/step-N/ as the engine commits it: files, then MANIFEST.json."""
    folder = out_dir / "checkpoints" / f"step-{step:07d}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(payload or f"weights {step}".encode())
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    manifest = {"step": step, "files": ["model.safetensors", "trainer_state.json"]}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


class Events(list):
    def __call__(self, events) -> bool:
        self.extend((e.log.level, e.log.message) for e in events)
        return True


def make_sync(store, out_dir, *, attempt=1, worker="w-a", current=lambda: True, **options):
    return CheckpointSync(
        store, "job-1", out_dir, attempt=attempt, worker_id=worker, keep=2,
        is_current=current, report=Events(), poll_s=0.05, backoff_s=0.01, **options,
    )  # fmt: skip


def remote_folders(root) -> dict[str, bool]:
    """step folder -> complete (has its marker)."""
    base = root / "job-1" / "checkpoints"
    return {p.name: (p / MARKER).exists() for p in sorted(base.iterdir())} if base.exists() else {}


def test_the_newest_checkpoint_is_uploaded_marker_last_and_old_ones_pruned(tmp_path):
    store, out = ArtifactStore((tmp_path / "store").as_uri()), tmp_path / "w-a" / "job-1"
    sync = make_sync(store, out)
    write_checkpoint(out, 10)
    (out / "checkpoints" / "step-0000015").mkdir()  # the engine is writing it: no MANIFEST
    assert sync.sync_once() == 10
    assert sync.sync_once() is None  # nothing new
    folder = tmp_path / "store" / "job-1" / "checkpoints" / "step-0000010.attempt-1"
    marker = json.loads((folder / MARKER).read_text())
    assert marker["files"] == ["MANIFEST.json", "model.safetensors", "trainer_state.json"]
    assert (marker["step"], marker["worker"], marker["host"]) == (10, "w-a", socket.gethostname())
    assert (folder / "model.safetensors").read_bytes() == b"weights 10"
    assert not (out / STAGING / "step-0000010").exists()  # the hard links are gone

    # An upload someone else left half done, and two newer checkpoints: keep-last-2.
    half = tmp_path / "store" / "job-1" / "checkpoints" / "step-0000012.attempt-0"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    for step in (20, 30):
        write_checkpoint(out, step)
        assert sync.sync_once() == step
    assert remote_folders(tmp_path / "store") == {
        "step-0000020.attempt-1": True,
        "step-0000030.attempt-1": True,
    }
    assert sync.uploaded == [10, 20, 30]
    assert [level for level, _ in sync.report] == ["debug"] * 3


def test_a_new_attempt_on_another_worker_downloads_the_newest_complete_upload(tmp_path):
    store = ArtifactStore((tmp_path / "store").as_uri())
    first = make_sync(store, tmp_path / "w-a" / "job-1")
    write_checkpoint(tmp_path / "w-a" / "job-1", 20, b"x" * 1000)
    events = tmp_path / "w-a" / "job-1" / "attempts" / "1" / "events.jsonl"
    events.parent.mkdir(parents=True)
    events.write_text('{"metrics": {"step": 19}}\n{"metrics": {"step": 20}}\n')
    first.sync_once()
    # A newer upload cut short (no marker) must never be used.
    half = tmp_path / "store" / "job-1" / "checkpoints" / "step-0000030.attempt-1"
    half.mkdir()
    (half / "MANIFEST.json").write_text("{}")

    out = tmp_path / "w-b" / "job-1"
    second = make_sync(store, out, attempt=2, worker="w-b")
    assert second.restore() == 20
    local = out / "checkpoints" / "step-0000020"
    assert (local / "model.safetensors").read_bytes() == b"x" * 1000
    assert sorted(p.name for p in local.iterdir()) == [
        "MANIFEST.json", "model.safetensors", "trainer_state.json",
    ]  # fmt: skip
    # w-a's events, for the steps it trained but may never have reported (killed).
    assert (out / "attempts" / "1" / "events.jsonl").read_text() == events.read_text()
    [(level, message)] = second.report
    assert level == "info"
    assert message.startswith(
        f"resumed from uploaded checkpoint step 20 (host {socket.gethostname()}, worker w-a, "
        "attempt 1): 3 files, 0.0 MB from "
    )
    # Out dir already as new (the same worker again): nothing to download.
    assert make_sync(store, out, attempt=3, worker="w-b").restore() is None
    write_checkpoint(tmp_path / "fresh" / "job-1", 25)
    assert make_sync(store, tmp_path / "fresh" / "job-1").restore() is None


def test_a_fenced_attempt_publishes_nothing_even_once_its_lease_is_back(tmp_path):
    store, out = ArtifactStore((tmp_path / "store").as_uri()), tmp_path / "w-a" / "job-1"
    lease = iter([True, False, True, True, True])  # cut off for a moment, then renewed
    sync = make_sync(store, out, current=lambda: next(lease, True))
    write_checkpoint(out, 10)
    assert sync.current()
    assert not sync.current()
    assert sync.sync_once() is None
    assert not sync.current()  # latched
    assert not any(remote_folders(tmp_path / "store").values())


def test_a_failing_store_is_a_warning_and_training_goes_on(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    out = tmp_path / "w-a" / "job-1"
    sync = make_sync(ArtifactStore(f"{blocker.as_uri()}/sub"), out, tries=3)
    write_checkpoint(out, 10)
    assert sync.sync_once() is None
    [(level, message)] = sync.report
    assert level == "warning"
    assert message.startswith(f"uploading step 10 at {blocker.as_uri()}/sub/job-1/checkpoints ")
    assert "failed 3 times" in message and "training goes on" in message
    assert sync.sync_once() is None and len(sync.report) == 1  # not retried forever
    assert sync.restore() is None  # the engine starts from what the out dir has


def test_the_thread_uploads_as_the_engine_writes_and_flushes_the_last_one(tmp_path):
    store, out = ArtifactStore((tmp_path / "store").as_uri()), tmp_path / "w-a" / "job-1"
    sync = make_sync(store, out)
    sync.start()
    write_checkpoint(out, 5)
    write_checkpoint(out, 6)  # written at once: 5 may be skipped, 6 must not
    sync.close(timeout_s=30)
    assert sync.uploaded[-1] == 6
    assert remote_folders(tmp_path / "store")["step-0000006.attempt-1"]
    assert not (out / STAGING).exists()
