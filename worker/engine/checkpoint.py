"""Resumable checkpoints: checkpoints/step-NNNNNNN/.

A checkpoint holds everything needed to continue a run exactly where it stopped:
  model.safetensors      the (unwrapped) model's weights: what the run can change only,
                         when the plan keeps a part frozen throughout (weights.py)
  optimizer.pt           optimizer state (torch.save; loaded with weights_only=True, so a
                         planted pickle cannot run code: it fails as InvalidJobInput)
  scheduler.pt           LR scheduler state
                         (both are left out of a finished run's checkpoint: nothing steps
                         again, and they are most of the bytes -- twice the model for Adam)
  rng-<rank>.pt          python / numpy / torch (/ cuda) RNG states of every process
  trainer_state.json     epoch, batch within the epoch, global step, best-so-far, ...
  best.safetensors       the best evaluated weights so far (out_dir/best/ at this step), a
                         hard link where the disk allows (no bytes); with it the checkpoint
                         is the whole state, so a copy on another machine (a worker without
                         the shared file system, worker/checkpoint_sync.py) resumes exactly
  MANIFEST.json          written last: a checkpoint without it is incomplete and ignored

Every file is written into ``step-NNNNNNN.tmp`` first, then the directory is renamed with
os.replace, so a crash mid-save never leaves a half checkpoint under the real name.

Only the main process writes (and reads) checkpoints: the machines of a multi-node job may
not share a file system. It gathers every rank's RNG states first (rank_sync.py), then runs
`begin`, `write_rng` once per rank, and `commit`.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tunefleet.worker.engine import rank_sync
from tunefleet.worker.engine.errors import InvalidJobInput, is_no_space
from tunefleet.worker.engine.weights import RunWeights

MANIFEST = "MANIFEST.json"
BEST_WEIGHTS = "best.safetensors"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")


@dataclass
class TrainerState:
    """Where the run is; saved in every checkpoint (trainer_state.json)."""

    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed by this process
    micro_batch_size: int = 0  # examples per micro-batch when batch_in_epoch was counted
    global_step: int = 0  # optimizer steps taken
    finished: bool = False
    best_value: float | None = None
    best_step: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_tied_steps: list[int] = field(default_factory=list)  # tied on the metric (selection.py)
    evals_since_best: int = 0
    last_eval_step: int = -1
    train_samples: float = 0.0  # global examples trained on (for samples/s)
    train_time_s: float = 0.0


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:07d}"


def _tmp_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:07d}.tmp"


# ----------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """All RNG states of this process, in types that torch.load(weights_only=True) accepts."""
    version, keys, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss)
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- save


def begin(root: Path, step: int) -> Path:
    """Main process: a fresh temp directory for the checkpoint of ``step``."""
    tmp = _tmp_dir(root, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rng(tmp: Path, rank: int, state: dict[str, Any] | None = None) -> None:
    """Main process: the RNG states of `rank` (capture_rng() of that process; default this
    process's own)."""
    try:
        torch.save(capture_rng() if state is None else state, tmp / f"rng-{rank}.pt")
    except Exception as exc:
        _raise_if_disk_full(exc, tmp, f"saving the RNG state of rank {rank}")
        raise


def _raise_if_disk_full(exc: Exception, where: Path, what: str) -> None:
    """Raises OSError(ENOSPC) for `exc` if the disk is full. torch.save does not say so:
    it fails with "unexpected pos 576 vs 534", so a nearly empty disk is taken as the cause."""
    try:
        nearly_full = shutil.disk_usage(where).free < _NEARLY_FULL_BYTES
    except OSError:
        nearly_full = False
    if is_no_space(exc) or nearly_full:
        raise OSError(errno.ENOSPC, f"no space left on device while {what} in {where}") from exc


_NEARLY_FULL_BYTES = 1024 * 1024


def commit(
    root: Path,
    step: int,
    *,
    model: nn.Module,
    optimizer_state: dict[str, Any] | None,
    scheduler_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    keep: int,
    identity: dict[str, str] | None = None,
    best_weights: Path | None = None,
    weights: RunWeights | None = None,
) -> Path:
    """Main process: write the rest, MANIFEST last, rename into place, prune old checkpoints.
    `identity` (lineage.identity: job id, spec hash) goes into the manifest; `best_weights`
    (the run's best weights file, when it has one) into the checkpoint as best.safetensors;
    `weights` says which of the model's tensors to write (all when None)."""
    tmp = _tmp_dir(root, step)
    try:
        if best_weights is not None and Path(best_weights).is_file():
            _link_or_copy(Path(best_weights), tmp / BEST_WEIGHTS)
        (weights or RunWeights(model)).save(model, tmp / "model.safetensors")
        _write(tmp, step, optimizer_state, scheduler_state, trainer_state, identity)
    except Exception as exc:
        try:
            _raise_if_disk_full(exc, Path(root), f"saving checkpoint step-{step:07d}")
            raise
        finally:  # a half-written checkpoint only takes space (which may be what ran out)
            shutil.rmtree(tmp, ignore_errors=True)
    final = step_dir(root, step)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune(root, keep)
    return final


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no bytes; the best file is only ever replaced by rename, never written in
    place, so the link keeps this step's content), or a copy where links do not work."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write(tmp, step, optimizer_state, scheduler_state, trainer_state, identity) -> None:
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    if scheduler_state is not None:
        torch.save(scheduler_state, tmp / "scheduler.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {"step": step, "files": files, "created": time.time(), **(identity or {})}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (with MANIFEST.json), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / MANIFEST).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest(root: Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop stale temp dirs."""
    checkpoints = list_checkpoints(root)
    for path in checkpoints[: max(len(checkpoints) - max(keep, 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)
    for path in Path(root).glob("step-*.tmp"):
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- load


@dataclass
class Checkpoint:
    path: Path
    trainer_state: dict[str, Any]

    def load_model(self, model: nn.Module, weights: RunWeights | None = None) -> None:
        """Loads the weights; a checkpoint whose tensors do not fit `model` (another
        architecture, another number of labels) is InvalidJobInput: it will never fit."""
        try:
            (weights or RunWeights(model)).load(model, self.path / "model.safetensors")
        except (OSError, InvalidJobInput):
            raise
        except Exception as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = "; ".join(lines[1:3] or lines[:1])[:300]
            raise InvalidJobInput(
                f"checkpoint {self.path.name} does not fit this job's model ({detail}); "
                "give the job a fresh output folder"
            ) from exc

    def optimizer_state(self) -> dict[str, Any] | None:
        """None in a finished run's checkpoint (see the module docstring)."""
        path = self.path / "optimizer.pt"
        return load_tensors(path) if path.is_file() else None

    def scheduler_state(self) -> dict[str, Any] | None:
        path = self.path / "scheduler.pt"
        return load_tensors(path) if path.is_file() else None

    def restore_best(self, best_file: Path) -> bool:
        """Puts the checkpoint's best weights at `best_file` (out_dir/best/model.safetensors):
        the best of the run up to this step, whatever a later step had written there.
        False when the checkpoint has none (no evaluation yet, or an older checkpoint)."""
        source = self.path / BEST_WEIGHTS
        if not source.is_file():
            return False
        best_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = best_file.with_name(best_file.name + ".tmp")
        tmp.unlink(missing_ok=True)
        _link_or_copy(source, tmp)
        os.replace(tmp, best_file)
        return True

    def rng_state(self, rank: int) -> dict[str, Any] | None:
        """The RNG states `rank` saved; None when the checkpoint has none for it."""
        path = self.path / f"rng-{rank}.pt"
        return load_tensors(path) if path.is_file() else None

    def restore_rng(self, rank: int) -> bool:
        """Restore this process's RNG from `rank`'s; False when the checkpoint has none."""
        state = self.rng_state(rank)
        if state is None:
            return False
        restore_rng(state)
        return True


def load_tensors(path: Path) -> Any:
    """torch.load limited to tensors and plain containers (weights_only=True): loading never
    runs code from the file. Anything else is refused as InvalidJobInput naming the file."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = next(
            (line for line in lines if "unsupported" in line.lower()), lines[0] if lines else ""
        )
        raise InvalidJobInput(
            f"{path}: refused to load: it holds more than tensors and plain data "
            f"(a tampered checkpoint?): {why[:300]}"
        ) from None


def load(path: Path) -> Checkpoint:
    state = json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))
    return Checkpoint(Path(path), state)


def save_weights_atomic(model: nn.Module, path: Path, weights: RunWeights | None = None) -> None:
    """The model's weights as one safetensors file (the run's best weights), never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    (weights or RunWeights(model)).save(model, tmp)
    os.replace(tmp, path)


def read_for_every_rank(
    acc, path: Path, model: nn.Module, weights: RunWeights
) -> tuple[dict[str, Any], Checkpoint | None]:
    """On resume, the main process alone reads the checkpoint (the other ranks may be on
    machines that do not see the job's folder) and loads its weights into `model`; every
    rank gets the optimizer, scheduler, trainer and its own RNG state. A bad checkpoint
    stops every rank with the same InvalidJobInput. Returns (that state, the Checkpoint on
    the main process, else None)."""
    saved, ckpt = None, None
    if acc.is_main_process:
        try:
            ckpt = load(path)
            ckpt.load_model(model, weights)
            saved = {
                "optimizer": ckpt.optimizer_state(),
                "scheduler": ckpt.scheduler_state(),
                "trainer": ckpt.trainer_state,
                "rng": [ckpt.rng_state(rank) for rank in range(acc.num_processes)],
            }
        except InvalidJobInput as exc:
            saved = {"invalid": str(exc)}
    saved = rank_sync.from_main(acc, saved)
    if "invalid" in saved:
        raise InvalidJobInput(saved["invalid"])
    return saved, ckpt
