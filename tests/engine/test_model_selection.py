"""Honest model selection: validation picks the checkpoint, the test set is only reported.

On the code before this, a torchvision job chose its best checkpoint (and early-stopped) on
the test split and reported nothing else; `data.test` did not exist. Every test here fails
there: the carve, the CIFAR reader, `bundle.test`, and the `test_*` figures are new.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from jobfiles import make_sentiment_csv

from tunefleet.spec import prepare
from tunefleet.worker.engine import cifar, models
from tunefleet.worker.engine.data import load_data
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.evaluation import evaluate_module
from tunefleet.worker.engine.splits import carve_validation
from tunefleet.worker.engine.trainer import run_job

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
CIFAR_CLASSES += ["dog", "frog", "horse", "ship", "truck"]


def make_cifar10(root, n_train: int = 100, n_test: int = 30, seed: int = 0):
    """A tiny CIFAR-10 in torchvision's on-disk layout; class c is brighter in channel c % 3."""
    rng = np.random.default_rng(seed)

    def split(n: int, classes: int = 10):
        labels = np.arange(n) % classes
        images = rng.integers(0, 128, (n, 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, c % 3] += np.uint8(64 + 12 * (c // 3))
        return images, labels.tolist()

    cifar.write(
        str(root), "CIFAR10", {"train": split(n_train), "test": split(n_test)}, CIFAR_CLASSES
    )
    return root


def vision_spec(root, **data):
    return prepare(
        {
            "name": "cifar-tiny",
            "model": {"source": "torchvision", "name": "smallcnn", "init": "random"},
            "data": {"source": "torchvision", "name": "CIFAR10", "root": str(root), **data},
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "schedule": {"name": "constant"},
            "train": {"epochs": 2, "batch_size": 16, "log_every_steps": 1, "seed": 0},
        }
    )


def load(spec):
    return load_data(spec, models.resolve_task(spec))


# ----------------------------------------------------------------------------- the carve


def test_carve_is_stratified_and_keeps_every_class_in_train():
    labels = np.array([0] * 100 + [1] * 50 + [2] * 10 + [3] * 1)
    kept, carved = carve_validation(labels, 0.2, seed=0)
    assert len(carved) == round(0.2 * len(labels))  # 32
    assert np.bincount(labels[carved], minlength=4).tolist() == [20, 10, 2, 0]
    assert set(labels[kept]) == {0, 1, 2, 3}  # the lone class-3 example stays in train
    assert np.array_equal(np.sort(np.concatenate([kept, carved])), np.arange(len(labels)))
    assert (np.diff(kept) > 0).all() and (np.diff(carved) > 0).all()


def test_carve_is_reproducible_by_seed():
    labels = np.arange(200) % 7
    a, b = carve_validation(labels, 0.1, seed=3), carve_validation(labels, 0.1, seed=3)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], carve_validation(labels, 0.1, seed=4)[1])
    assert len(carve_validation(labels, 0.0, seed=0)[1]) == 0


# ----------------------------------------------------------------------------- the data


def test_torchvision_validation_is_carved_from_train_and_test_is_the_test_split(tmp_path):
    root = make_cifar10(tmp_path / "data")
    spec = vision_spec(root)
    bundle = load(spec)
    assert bundle.label_names == CIFAR_CLASSES
    assert (len(bundle.train), len(bundle.eval), len(bundle.test)) == (90, 10, 30)
    assert np.bincount(bundle.eval.labels, minlength=10).tolist() == [1] * 10  # stratified
    assert bundle.eval.get is bundle.train.get  # the same source images: train's
    assert not set(bundle.eval.rows) & set(bundle.train.rows)
    assert bundle.test.rows.tolist() == list(range(30))
    assert bundle.notes == [
        "validation: 10 examples carved from train (0.1, stratified, seed 0); test: 30 examples "
        "(CIFAR10 test), evaluated once on the exported model"
    ]
    # Reproducible: the same spec carves the same rows; train.seed does not move them,
    # validation_seed does.
    assert load(spec).eval.rows.tolist() == bundle.eval.rows.tolist()
    reseeded = vision_spec(root)
    reseeded.train.seed = 7
    assert load(reseeded).eval.rows.tolist() == bundle.eval.rows.tolist()
    other = load(vision_spec(root, validation_seed=1))
    assert other.eval.rows.tolist() != bundle.eval.rows.tolist()
    # Limits apply after the carve: limit_train takes from what is left to train on.
    limited = load(vision_spec(root, limit_train=20, limit_eval=5, limit_test=7))
    assert (len(limited.train), len(limited.eval), len(limited.test)) == (20, 5, 7)
    assert limited.eval.rows.tolist() == bundle.eval.rows[:5].tolist()


def test_old_yaml_with_eval_test_validates_on_the_test_split_as_before(tmp_path):
    root = make_cifar10(tmp_path / "data")
    bundle = load(vision_spec(root, eval="test"))
    assert (len(bundle.train), len(bundle.eval), bundle.test) == (100, 30, None)
    assert "the test split" in bundle.notes[0] and "optimistic" in bundle.notes[0]


def test_csv_test_file_is_read_with_the_train_label_space(tmp_path, bert_dir, text_spec):
    train, evl, test = (make_sentiment_csv(tmp_path / f"{n}.csv", k, s) for n, k, s in
                        (("train", 24, 0), ("eval", 8, 1), ("test", 10, 2)))  # fmt: skip
    spec = text_spec(bert_dir, (train, evl), data={"test": str(test)})
    bundle = load(spec)
    assert (len(bundle.train), len(bundle.eval), len(bundle.test)) == (24, 8, 10)
    assert bundle.label_names == ["neg", "pos"]
    assert bundle.test.labels.tolist() == [1, 0] * 5


def test_data_mean_std_replace_the_models_normalisation_and_are_exported(tmp_path):
    root = make_cifar10(tmp_path / "data", n_train=20, n_test=10)
    spec = vision_spec(root, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    task = models.resolve_task(spec)
    assert (task.mean, task.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert models.resolve_task(vision_spec(root)).mean != task.mean  # CIFAR's own statistics
    bundle = load_data(spec, task)
    raw = cifar.read(str(root), "CIFAR10", True)[0][int(bundle.train.rows[0])].float() / 255
    assert torch.allclose(bundle.train[0]["pixel_values"], (raw - 0.5) / 0.5, atol=1e-6)


def test_cifar_reader_refuses_a_planted_pickle(tmp_path):
    root = make_cifar10(tmp_path / "data", n_train=10, n_test=5)
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Payload(), "labels": [0]}, f, protocol=2)
    with pytest.raises(InvalidJobInput, match="test_batch: refused.*posix.system"):
        cifar.read(str(root), "CIFAR10", False)
    assert not marker.exists()


def test_missing_cifar_folder_says_where_it_looked(tmp_path):
    spec = vision_spec(tmp_path)
    with pytest.raises(InvalidJobInput, match="cifar-10-batches-py.*data.download: true"):
        load(spec)


# ----------------------------------------------------------------------------- jobs


def test_torchvision_job_picks_on_validation_and_reports_test_apart(tmp_path, events):
    root = make_cifar10(tmp_path / "data")
    spec = vision_spec(root, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    out = tmp_path / "out"
    result = run_job(spec, out, events)

    assert any(m.startswith("validation: 10 examples carved from train") for m in events.logs())
    metrics = [e.metrics for e in events.kind("metrics")]
    evals = [m for m in metrics if m.phase == "eval"]
    (test,) = [m for m in metrics if m.phase == "test"]  # once, at the end
    assert len(evals) == 2 and test.step == evals[-1].step
    s = result.summary
    best = max(evals, key=lambda m: m.values["accuracy"])  # first of the best: ties keep it
    assert s["best_step"] == best.step
    for key in ("accuracy", "macro_f1", "loss"):
        assert s[f"eval_{key}"] == pytest.approx(best.values[key])
        assert s[f"test_{key}"] == pytest.approx(test.values[key])
    assert json.loads((out / "result.json").read_text())["summary"] == s

    # The exported (best) model: its validation figures are the chosen ones, computed on the
    # carved rows; its test figures are the test split's.
    from tunefleet.worker.engine import load_model

    model = load_model(out / "model")
    meta = json.loads((out / "model" / "tunefleet_model.json").read_text())
    assert meta["task"]["mean"] == [0.5, 0.5, 0.5]  # inference normalises as training did
    bundle = load(spec)
    for role, prefix in (("eval", "eval_"), ("test", "test_")):
        loader = torch.utils.data.DataLoader(
            getattr(bundle, role), batch_size=64, collate_fn=bundle.collate
        )
        got = evaluate_module(model, loader, "torchvision", 10)
        assert got["accuracy"] == pytest.approx(s[f"{prefix}accuracy"])
        assert got["loss"] == pytest.approx(s[f"{prefix}loss"], rel=1e-4)


def test_csv_job_with_a_test_file_reports_test_metrics(tmp_path, bert_dir, text_spec, events):
    train, evl, test = (make_sentiment_csv(tmp_path / f"{n}.csv", k, s) for n, k, s in
                        (("train", 24, 0), ("eval", 8, 1), ("test", 10, 2)))  # fmt: skip
    spec = text_spec(bert_dir, (train, evl), data={"test": str(test)})
    result = run_job(spec, tmp_path / "out", events)
    phases = [e.metrics.phase for e in events.kind("metrics") if e.metrics.phase != "train"]
    phases = [p for p in phases if not p.startswith("progress/")]  # a follower's bar
    assert phases == ["eval", "test"]
    assert {"eval_accuracy", "test_accuracy", "test_macro_f1", "test_loss"} <= set(result.summary)
    assert any("test: 10 examples" in m for m in events.logs())
    # Without data.test nothing is tested, as before.
    plain = run_job(text_spec(bert_dir, (train, evl)), tmp_path / "plain", lambda e: None)
    assert not any(k.startswith("test_") for k in plain.summary)
