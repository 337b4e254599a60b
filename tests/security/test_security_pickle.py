"""Loading models and checkpoints never unpickles untrusted data: a pickle whose
__reduce__ would run a command, planted where a weights or state file belongs, is refused
with a clear error and the command never runs."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tunefleet.spec import prepare  # noqa: E402
from tunefleet.worker.engine import checkpoint  # noqa: E402
from tunefleet.worker.engine.errors import InvalidJobInput  # noqa: E402


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:  # protocol 2, as torch.save writes
        pickle.dump({"state": Payload(marker), "param_groups": []}, f, protocol=2)


def test_the_payload_works_when_unpickled(tmp_path):
    """The control: plain pickle.load would run it."""
    marker = tmp_path / "MARKER"
    plant(tmp_path / "evil.pt", marker)
    with open(tmp_path / "evil.pt", "rb") as f:
        pickle.load(f)  # noqa: S301 - the point of the test
    assert marker.exists()


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng-0.pt"])
def test_checkpoint_state_files_refuse_a_planted_pickle(tmp_path, name):
    marker = tmp_path / "MARKER"
    ckpt = checkpoint.step_dir(tmp_path / "checkpoints", 5)
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / checkpoint.MANIFEST).write_text("{}")
    plant(ckpt / name, marker)
    loaded = checkpoint.load(checkpoint.latest(tmp_path / "checkpoints"))
    read = {
        "optimizer.pt": loaded.optimizer_state,
        "scheduler.pt": loaded.scheduler_state,
        "rng-0.pt": lambda: loaded.restore_rng(0),
    }[name]
    with pytest.raises(InvalidJobInput, match=f"{name}: refused to load.*posix.system"):
        read()
    assert not marker.exists()


def test_resuming_a_run_from_a_tampered_checkpoint_fails_cleanly(
    tmp_path, tiny_bert, sentiment_data
):
    from tunefleet.worker.engine import run_job

    spec = prepare(
        {
            "name": "resume",
            "model": {"source": "hf", "name": str(tiny_bert)},
            "data": {
                "source": "csv",
                "train": str(sentiment_data[0]),
                "max_length": 16,
                "limit_train": 32,
            },
            "train": {"epochs": 1, "batch_size": 16, "checkpoint_every_steps": 1, "max_steps": 2},
            "resources": {"gpus": 0},
        }
    )
    out = tmp_path / "run"
    run_job(spec, out, lambda event: None)
    latest = checkpoint.latest(out / "checkpoints")
    assert latest is not None
    marker = tmp_path / "MARKER"
    plant(latest / "optimizer.pt", marker)
    with pytest.raises(InvalidJobInput, match="optimizer.pt: refused to load"):
        run_job(spec, out, lambda event: None, resume=True)
    assert not marker.exists()


def test_a_model_folder_with_pickled_weights_is_refused(tmp_path, tiny_bert):
    from tunefleet.worker.engine.models import _load_hf

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "MARKER"
    plant(folder / "pytorch_model.bin", marker)
    with pytest.raises(InvalidJobInput, match="model.name: refused to load"):
        _load_hf(str(folder), None)
    assert not marker.exists()


def test_model_checkpoint_must_be_safetensors(tmp_path):
    from tunefleet.worker.engine.architectures import SmallCNN
    from tunefleet.worker.engine.models import _load_checkpoint_into

    marker = tmp_path / "MARKER"
    plant(tmp_path / "weights.safetensors", marker)
    with pytest.raises(InvalidJobInput, match="model.checkpoint: .* is not a safetensors file"):
        _load_checkpoint_into(SmallCNN(10, in_channels=1), tmp_path / "weights.safetensors")
    assert not marker.exists()


def test_an_exported_model_folder_loads_weights_only_from_safetensors(tmp_path):
    from tunefleet.worker.engine.export import load_model

    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "tunefleet_model.json").write_text(
        '{"kind": "torchvision", "arch": "smallcnn", "num_labels": 10, "labels": [], '
        '"head": {"init": "normal", "init_std": 0.01, "dropout": 0.0, "hidden": 0}, '
        '"task": {"in_channels": 1}}'
    )
    marker = tmp_path / "MARKER"
    plant(folder / "model.safetensors", marker)
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error; the point is no code ran
        load_model(folder)
    assert not marker.exists()
