"""Two gloo CPU processes via `accelerate launch` reproduce one process with the same global
batch: the CLI path end to end (spec JSON in, events.jsonl and result.json out); also as two
machines with a folder each (no shared file system), preempted and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tunefleet.spec import spec_to_dict
from tunefleet.v1 import coordinator_pb2
from tunefleet.worker.engine import checkpoint, run_job
from tunefleet.worker.engine.events import read_events
from tunefleet.worker.engine.launch import build_command, free_port


def test_two_processes_match_one_process_with_double_batch(
    tmp_path, bert_nodrop_dir, text_csvs, text_spec, events
):
    sections = {"train": {"epochs": 2, "batch_size": 8}, "eval": {"batch_size": 5}}
    one = text_spec(bert_nodrop_dir, text_csvs, **sections)
    run_job(one, tmp_path / "one", events)
    want = events.train_losses()
    want_eval = [
        e.metrics.values["loss"] for e in events.kind("metrics") if e.metrics.phase == "eval"
    ]
    assert len(want) == 6

    two = text_spec(
        bert_nodrop_dir,
        text_csvs,
        train={"epochs": 2, "batch_size": 4},
        eval={"batch_size": 5},
        resources={"processes": 2},
    )
    spec_path, out, events_path = (
        tmp_path / "spec.json",
        tmp_path / "two",
        tmp_path / "two-events.jsonl",
    )
    spec_path.write_text(json.dumps(spec_to_dict(two)))
    cmd = build_command(two, spec_path, out, events_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    got_events = read_events(events_path)
    assert got_events[0].report.name == "freeze_plan"
    assert any("training on 2 CPU processes (gloo)" in e.log.message for e in got_events)
    got = {e.metrics.step: e.metrics.loss for e in got_events if e.metrics.phase == "train"}
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-4), step
    got_eval = [e.metrics.values["loss"] for e in got_events if e.metrics.phase == "eval"]
    assert got_eval == pytest.approx(want_eval, abs=1e-4)
    result = json.loads((out / "result.json").read_text())
    assert result["artifacts"]["model"] == str(out / "model") and result["summary"]["steps"] == 6


def test_two_processes_train_an_epochs_short_last_step_on_its_own_examples(
    tmp_path, bert_nodrop_dir, text_spec, events
):
    """26 examples, global batch 8: the last step holds 2. Accelerate tops the processes'
    last batches up with the epoch's first examples (even_batches), so two processes of
    batch 4 trained that step on its 2 examples and 6 repeats (max weight difference 0.19
    at lr 0.5 against one process of batch 8); the repeats now have no share of it."""
    from engine_helpers import make_csv
    from safetensors.torch import load_file

    data = (make_csv(tmp_path / "train.csv", 26), make_csv(tmp_path / "eval.csv", 6, seed=1))
    sections = {
        "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
        "schedule": {"name": "constant"},
    }
    train = {"epochs": 2, "max_grad_norm": 0.0, "precision": "no"}  # exact: fp32
    one = text_spec(bert_nodrop_dir, data, train={**train, "batch_size": 8}, **sections)
    run_job(one, tmp_path / "one", events)
    want = events.train_losses()

    two = text_spec(
        bert_nodrop_dir, data, train={**train, "batch_size": 4},
        resources={"processes": 2}, **sections,
    )  # fmt: skip
    spec_path, out, events_path = tmp_path / "two.json", tmp_path / "two", tmp_path / "two.jsonl"
    spec_path.write_text(json.dumps(spec_to_dict(two)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = build_command(two, spec_path, out, events_path)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = _train_steps(events_path)
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-5), step
    a = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-5, key


def _launch_two_machines(spec, folders, tag: str, env) -> list[subprocess.Popen]:
    """Machine ranks 0 and 1 of a 2-node job on this host, each with its own folder (two
    hosts that share no file system), as two workers would start them."""
    port = free_port()
    procs = []
    for rank, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / f"spec-{tag}.json"
        spec_path.write_text(json.dumps(spec_to_dict(spec)))
        rendezvous = coordinator_pb2.Rendezvous(
            machine_rank=rank, num_machines=2, main_process_ip="127.0.0.1", main_process_port=port
        )
        cmd = build_command(
            spec, spec_path, folder, folder / f"events-{tag}.jsonl", rendezvous=rendezvous
        )
        with (folder / f"engine-{tag}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )  # fmt: skip
            )
    return procs


def _train_steps(path) -> dict[int, float]:
    if not path.exists():
        return {}
    return {e.metrics.step: e.metrics.loss for e in read_events(path) if e.metrics.phase == "train"}


@pytest.mark.timeout(400)
def test_two_machines_without_a_shared_folder_resume_exactly_from_rank_0s_checkpoint(
    tmp_path, bert_nodrop_dir, text_csvs, text_spec, events
):
    """Only the main process reads and writes the job's folder: a checkpoint holds both
    ranks' RNG (gathered), and on resume rank 0 sends rank 1, whose folder is empty, the
    weights and optimizer state. The interrupted-and-resumed run's losses are those of one
    uninterrupted process with the same global batch."""
    fp32 = {"precision": "no"}  # exact equalities: bf16 rounds by the batch's shape
    sections = {"train": {"epochs": 20, "batch_size": 4, **fp32}, "eval": {"batch_size": 6}}
    run_job(text_spec(bert_nodrop_dir, text_csvs, **sections), tmp_path / "one", events)
    want = events.train_losses()
    assert len(want) == 120

    gang = text_spec(
        bert_nodrop_dir,
        text_csvs,
        train={"epochs": 20, "batch_size": 2, **fp32},
        eval={"batch_size": 6},
        resources={"nodes": 2, "processes": 1},
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    rank0, rank1 = tmp_path / "host-a", tmp_path / "host-b"
    first = _launch_two_machines(gang, [rank0, rank1], "1", env)
    try:
        deadline = time.monotonic() + 180
        while max(_train_steps(rank0 / "events-1.jsonl"), default=0) < 3:
            assert time.monotonic() < deadline and first[0].poll() is None, (
                rank0 / "engine-1.log"
            ).read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(first[0].pid, signal.SIGTERM)  # machine 0 is preempted; both stop
        codes = [p.wait(timeout=120) for p in first]
    finally:
        for proc in first:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stopped = _train_steps(rank0 / "events-1.jsonl")
    saved = checkpoint.latest(rank0 / "checkpoints")
    assert saved is not None and max(stopped) < 120, (codes, sorted(stopped))
    assert {"rng-0.pt", "rng-1.pt"} <= {p.name for p in saved.iterdir()}
    assert not (rank1 / "checkpoints").exists()  # nothing written on the other host

    second = _launch_two_machines(gang, [rank0, rank1], "2", env)
    try:
        codes = [p.wait(timeout=240) for p in second]
    finally:
        for proc in second:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert codes == [0, 0], (rank1 / "engine-2.log").read_text()[-3000:]
    logs = [e.log.message for e in read_events(rank0 / "events-2.jsonl") if e.log.message]
    step = int(saved.name.split("-")[1])
    assert any(m.startswith(f"resumed from {saved.name}: step {step}") for m in logs), logs
    resumed = _train_steps(rank0 / "events-2.jsonl")
    assert sorted(resumed) == list(range(step + 1, 121))
    got = {**{s: v for s, v in stopped.items() if s <= step}, **resumed}
    assert sorted(got) == sorted(want)
    for s in want:
        assert got[s] == pytest.approx(want[s], abs=1e-4), s
    assert (rank0 / "model" / "config.json").is_file() and not (rank1 / "model").exists()
