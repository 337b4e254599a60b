"""`ftctl sweep suggest`: a search space from the data's size, written as a sweep file the
one validator takes, as a real subprocess (no coordinator is needed)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunefleet.spec import advice, load_job_file
from tunefleet.spec import sweep as space

FTCTL = Path(sys.executable).parent / "ftctl"


def labelled_csv(path: Path, classes: int, per_class: int) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(per_class):
            for c in range(classes):
                w.writerow([f"row {i} of class {c}", f"class-{c}"])
    return path


def job_file(tmp_path: Path, per_class: int, **overrides) -> Path:
    train = labelled_csv(tmp_path / f"train-{per_class}.csv", 5, per_class)
    model = tmp_path / "bert"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"model_type": "bert"}')
    job = {
        "name": f"suggest-{per_class}",
        "model": {"source": "hf", "name": "bert"},
        "data": {"source": "csv", "train": train.name, "eval": train.name},
        "finetune": {"strategy": "last_k", "k": 3},
        "compression": {"prune": {"amount": 0.3}},
        **overrides,
    }
    path = tmp_path / f"job-{per_class}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def suggest(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FTCTL, "sweep", "suggest", str(path), *extra], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("per_class", "first", "lr"),
    [(4, "lp_ft", 5e-5), (40, "lp_ft", 5e-5), (150, "full", 5e-5)],
)
def test_the_first_pick_follows_examples_per_class(tmp_path, per_class, first, lr):
    out = tmp_path / "sweep.yaml"
    done = suggest(job_file(tmp_path, per_class), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert f"{per_class * 5:,} training examples, 5 classes ({per_class} per class" in done.stderr
    assert f"-> {first} first at lr {lr:g}" in done.stderr
    assert ("then head_only, last_k" in done.stderr) == (per_class < 20)
    # The file is a sweep the validator takes, from any folder (paths made absolute), and
    # the first pick is one of its grid points.
    spec = load_job_file(out, check_paths=True)
    points = space.grid(spec.sweep)
    assert {"finetune.strategy": first, "optimizer.lr": lr} in [
        {k: p[k] for k in ("finetune.strategy", "optimizer.lr") if k in p} for p in points
    ]
    assert spec.sweep.space["finetune.strategy"].values[0] == first
    # Strategy-specific base fields and per-trial compression are left out, and said so.
    assert not spec.HasField("compression") and "compression left out" in out.read_text()
    last_k = [p for p in points if p["finetune.strategy"] == "last_k"]
    assert all(p["finetune.k"] == 2 for p in last_k)


def test_the_jobs_own_lr_is_swept_first_and_stdout_is_the_file(tmp_path):
    path = job_file(tmp_path, 150, optimizer={"name": "adamw", "lr": 1e-4})
    done = suggest(path)
    assert done.returncode == 0, done.stderr
    sweep = yaml.safe_load(done.stdout)["sweep"]
    assert sweep["space"]["optimizer.lr"] == {
        "values": [1e-4, 4e-5, 2e-4],
        "when": {"finetune.strategy": "full"},
    }
    assert done.stdout.startswith("# ftctl sweep suggest")


def test_unknown_size_and_bad_inputs(tmp_path):
    spec = load_job_file(job_file(tmp_path, 150), check_paths=False)
    spec.data.source, spec.data.name, spec.data.train = "hf", "glue", "train"
    proposal = advice.suggest(spec, advice.data_size(spec))
    assert proposal.first["finetune.strategy"] == "lp_ft"
    assert "size unknown" in proposal.why
    # Torchvision sets have known sizes; a class subset and limit_train shrink them.
    spec.data.source, spec.data.name = "torchvision", "FashionMNIST"
    spec.data.classes[:] = [5, 6, 7, 8, 9]
    spec.data.limit_train = 500
    spec.model.ClearField("labels")
    assert advice.data_size(spec) == advice.DataSize(500, 5, "torchvision FashionMNIST")

    missing = suggest(tmp_path / "nope.yaml")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "nope.yaml" in missing.stderr
    swept = tmp_path / "swept.yaml"
    swept.write_text(
        job_file(tmp_path, 4).read_text() + "sweep: {space: {optimizer.lr: [0.1, 0.2]}}\n"
    )
    refused = suggest(swept)
    assert refused.returncode != 0 and "already has a sweep: block" in refused.stderr
