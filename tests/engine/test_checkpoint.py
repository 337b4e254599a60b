"""Checkpoints: atomic layout, MANIFEST-gated discovery, pruning, RNG round trip."""

from __future__ import annotations

import random

import numpy as np
import torch

from tunefleet.worker.engine import checkpoint


def save(root, step, model, keep=2):
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (i + 1))
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    sched.step()
    checkpoint.begin(root, step)
    checkpoint.write_rng(root / f"step-{step:07d}.tmp", 0)
    return (
        checkpoint.commit(
            root,
            step,
            model=model,
            optimizer_state=opt.state_dict(),
            scheduler_state=sched.state_dict(),
            trainer_state={"global_step": step, "epoch": 1},
            keep=keep,
        ),
        opt,
        sched,
    )


def test_round_trip_and_layout(tmp_path):
    model = torch.nn.Linear(3, 2)
    path, opt, sched = save(tmp_path, 5, model)
    assert path.name == "step-0000005"
    assert sorted(p.name for p in path.iterdir()) == [
        "MANIFEST.json",
        "model.safetensors",
        "optimizer.pt",
        "rng-0.pt",
        "scheduler.pt",
        "trainer_state.json",
    ]
    assert not list(tmp_path.glob("*.tmp"))

    ckpt = checkpoint.load(checkpoint.latest(tmp_path))
    assert ckpt.trainer_state == {"global_step": 5, "epoch": 1}
    fresh = torch.nn.Linear(3, 2)
    ckpt.load_model(fresh)
    assert torch.equal(fresh.weight, model.weight)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    opt2.load_state_dict(ckpt.optimizer_state())
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    assert ckpt.scheduler_state()["last_epoch"] == sched.state_dict()["last_epoch"]


def test_incomplete_checkpoints_are_ignored_and_old_ones_pruned(tmp_path):
    model = torch.nn.Linear(3, 2)
    for step in (1, 2, 3):
        save(tmp_path, step, model, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "step-0000002",
        "step-0000003",
    ]
    # A crash mid-save: a higher step without MANIFEST.json, and a leftover temp dir.
    (tmp_path / "step-0000009").mkdir()
    (tmp_path / "step-0000010.tmp").mkdir()
    assert checkpoint.latest(tmp_path).name == "step-0000003"


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    torch.save(checkpoint.capture_rng(), tmp_path / "rng.pt")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    checkpoint.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_the_best_weights_travel_with_the_checkpoint(tmp_path):
    """A checkpoint copied to another machine (no shared file system) holds the run's best
    weights as of its step, even after a later step replaced out_dir/best."""
    model = torch.nn.Linear(3, 2)
    best = tmp_path / "best" / "model.safetensors"
    checkpoint.save_weights_atomic(model, best)
    checkpoint.begin(tmp_path / "ckpt", 4)
    path = checkpoint.commit(
        tmp_path / "ckpt", 4, model=model, optimizer_state=None, scheduler_state=None,
        trainer_state={"global_step": 4}, keep=2, best_weights=best,
    )  # fmt: skip
    assert (path / "best.safetensors").stat().st_ino == best.stat().st_ino  # a link, no bytes
    assert "best.safetensors" in checkpoint.read_manifest(path)["files"]
    kept = best.read_bytes()
    checkpoint.save_weights_atomic(torch.nn.Linear(3, 2), best)  # a later, better step
    assert best.read_bytes() != kept and (path / "best.safetensors").read_bytes() == kept

    elsewhere = tmp_path / "other-host" / "best" / "model.safetensors"
    assert checkpoint.load(path).restore_best(elsewhere)
    assert elsewhere.read_bytes() == kept
    checkpoint.begin(tmp_path / "ckpt", 5)
    bare = checkpoint.commit(
        tmp_path / "ckpt", 5, model=model, optimizer_state=None, scheduler_state=None,
        trainer_state={"global_step": 5}, keep=2,
    )  # fmt: skip
    assert not checkpoint.load(bare).restore_best(tmp_path / "none" / "model.safetensors")
