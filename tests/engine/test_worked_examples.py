"""The method's two worked examples (examples/cifar10-*.yaml, examples/sst2-bert.yaml), run
offline through `ftctl run` on stand-ins for what they download.

Each test loads the example file itself and changes only what needs the internet (the
dataset's location, `download`, the hub model) and the length of the run, so the code paths
are the examples' own: torchvision's CIFAR-10 folder layout read with `download: false`,
`data.mean/std`, the carved validation set and the test split; a hub-layout dataset with
GLUE SST-2's columns (`sentence`, `label`, `idx`) through `data.source: hf`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from jobfiles import FILLER, WORDS
from test_model_selection import make_cifar10

from tunefleet.client.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FTCTL = Path(sys.executable).parent / "ftctl"
WORKED = ("cifar10-alexnet.yaml", "cifar10-smallcnn-scratch.yaml", "sst2-bert.yaml")


def example(name: str) -> dict:
    text = (EXAMPLES / name).read_text()
    first = text.splitlines()[0]
    assert first.startswith(f"# ftctl run examples/{name}"), first  # the command that runs it
    assert "internet" in text.split("\nname:")[0]  # says it needs it
    return yaml.safe_load(text)


def run(tmp_path: Path, job: dict, capsys) -> tuple[str, dict]:
    path = tmp_path / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump(job))
    out_dir = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 0, (out, err)
    return out, json.loads((out_dir / "result.json").read_text())["summary"]


def short(job: dict, **train) -> dict:
    job["train"].update({"max_steps": 2, "log_every_steps": 1, **train})
    job["resources"] = {"gpus": 0}
    return job


@pytest.mark.parametrize("name", WORKED)
def test_examples_validate_offline(name):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [str(FTCTL), "validate", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"ok: {EXAMPLES / name}")


def test_cifar10_examples_keep_the_methods_hyperparameters():
    alexnet = example("cifar10-alexnet.yaml")
    assert alexnet["model"] == {
        "source": "torchvision",
        "name": "alexnet",
        "weights": "IMAGENET1K_V1",
    }
    assert alexnet["optimizer"] == {
        "name": "sgd",
        "lr": 0.001,
        "momentum": 0.9,
        "weight_decay": 0.0,
    }
    assert alexnet["train"]["batch_size"] == 32
    assert alexnet["data"]["download"] is True and alexnet["data"]["name"] == "CIFAR10"
    scratch = example("cifar10-smallcnn-scratch.yaml")
    assert scratch["model"]["name"] == "smallcnn" and scratch["model"]["init"] == "random"
    for key in ("mean", "std", "validation_fraction", "test"):
        assert scratch["data"][key] == alexnet["data"][key]


def test_cifar10_smallcnn_example_reads_torchvisions_layout_offline(tmp_path, capsys):
    root = make_cifar10(tmp_path / "data", n_train=200, n_test=40)
    job = short(example("cifar10-smallcnn-scratch.yaml"))
    job["data"].update(root=str(root), download=False)
    out, summary = run(tmp_path, job, capsys)
    assert "validation: 20 examples carved from train (0.1, stratified, seed 0)" in out
    assert "test: 40 examples (CIFAR10 test)" in out
    assert "test  step 2/2" in out  # the one test evaluation, after training
    assert "  validation  accuracy" in out and "  test        accuracy" in out
    assert {"eval_accuracy", "test_accuracy", "test_macro_f1", "test_loss"} <= set(summary)


def test_cifar10_alexnet_example_with_its_weights_in_the_torch_cache(tmp_path, capsys, monkeypatch):
    """The pretrained weights come from torch's hub cache, where torchvision keeps what it
    downloaded: a random AlexNet planted there stands in for IMAGENET1K_V1."""
    import torch
    import torchvision

    weights = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), cache / Path(weights.url).name)

    root = make_cifar10(tmp_path / "data", n_train=40, n_test=8)
    job = short(example("cifar10-alexnet.yaml"), max_steps=1, batch_size=4)
    job["data"].update(root=str(root), download=False, image_size=64)  # 224 is slow on CPU
    job["eval"]["batch_size"] = 8
    out, summary = run(tmp_path, job, capsys)
    assert "freeze plan: strategy last_k" in out
    assert "validation: 4 examples carved from train" in out and "test: 8 examples" in out
    assert {"eval_accuracy", "test_accuracy"} <= set(summary)
    meta = json.loads((tmp_path / "run" / "model" / "tunefleet_model.json").read_text())
    assert meta["task"]["mean"] == [0.5, 0.5, 0.5] and meta["task"]["std"] == [0.5, 0.5, 0.5]


def make_sst2(folder: Path) -> Path:
    """GLUE SST-2's layout and columns, saved as the hub's `datasets` save it; the test split
    has no labels (-1), as on the hub."""
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
            "idx": datasets.Value("int32"),
        }
    )

    def split(n: int, labelled: bool = True) -> datasets.Dataset:
        rows = {"sentence": [], "label": [], "idx": []}
        for i in range(n):
            words = list(rng.choice(FILLER, 4)) + list(
                rng.choice(WORDS["pos"] if i % 2 else WORDS["neg"], 2)
            )
            rows["sentence"].append(" ".join(words))
            rows["label"].append(i % 2 if labelled else -1)
            rows["idx"].append(i)
        return datasets.Dataset.from_dict(rows, features=features)

    datasets.DatasetDict(
        {"train": split(96), "validation": split(32), "test": split(16, labelled=False)}
    ).save_to_disk(str(folder))
    return folder


def test_sst2_bert_example_reads_a_hub_layout_dataset_offline(tmp_path, capsys, bert_dir):
    job = example("sst2-bert.yaml")
    assert job["model"]["name"] == "bert-base-uncased"
    data = job["data"]
    assert (data["source"], data["name"], data["config"]) == ("hf", "glue", "sst2")
    assert (data["text_column"], data["eval"]) == ("sentence", "validation")
    assert job["finetune"] == {"strategy": "last_k", "k": 2}  # layer 11 + pooler + new layer
    assert job["optimizer"] == {"name": "adamw", "lr": 2e-5, "eps": 1e-8, "weight_decay": 0.0}
    assert job["schedule"] == {"name": "linear", "warmup_steps": 0}
    assert (job["train"]["batch_size"], job["train"]["max_grad_norm"]) == (32, 1.0)

    job = short(job, max_steps=3)
    job["model"]["name"] = str(bert_dir)  # a tiny BERT in place of bert-base-uncased
    job["data"]["name"] = str(make_sst2(tmp_path / "glue-sst2"))
    job["data"]["max_length"] = 16
    out, summary = run(tmp_path, job, capsys)
    assert "validation: 32 examples (hf dataset" in out and "split 'validation'" in out
    assert "test: none" in out
    assert "eval  step 3/3" in out
    assert summary["eval_accuracy"] >= 0 and not any(k.startswith("test_") for k in summary)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_still_validates(path):
    """Older examples keep working: `data.eval` keeps its meaning (the validation set), and
    torchvision ones without it now carve validation from train and test on the test split."""
    from tunefleet.spec import prepare, read_yaml

    job = read_yaml(path)
    if job["model"].get("source") == "job":
        job["model"]["job"] = "job-0001"  # make demo fills in the pretrain job's id
    spec = prepare(job, base_dir=path.parent, check_paths=False)
    d = spec.data
    if d.source == "torchvision" and not d.eval:
        assert (d.validation_fraction, d.test) == (0.1, "test")
    elif d.eval:
        assert d.validation_fraction == 0.0
