"""A run's weight files hold what the run can change (weights.py): a head_only or last_k run
writes its head (and last blocks), not the frozen body; it resumes exactly from them, exports
a whole model, and refuses them when the frozen body they were trained on has changed."""

from __future__ import annotations

import shutil

import pytest
import torch
from engine_helpers import Crash, crash_after_checkpoint
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from tunefleet.worker.engine import checkpoint, run_job
from tunefleet.worker.engine.architectures import quiet_transformers
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.weights import RunWeights


def _spec(text_spec, bert_dir, text_csvs, **finetune):
    return text_spec(
        bert_dir,
        text_csvs,
        finetune=finetune,
        train={"epochs": 2, "checkpoint_every_steps": 4},
        eval={"every_steps": 4},
    )


@pytest.mark.parametrize(
    ("finetune", "kept"),
    [
        ({"strategy": "head_only"}, ("classifier.",)),
        ({"strategy": "last_k", "k": 1}, ("classifier.", "bert.pooler.")),
    ],
)
def test_files_hold_the_trained_part_and_the_export_is_whole(
    tmp_path, bert_dir, text_csvs, text_spec, events, finetune, kept
):
    run_job(_spec(text_spec, bert_dir, text_csvs, **finetune), tmp_path, events)
    pretrained = load_file(str(bert_dir / "model.safetensors"))
    latest = checkpoint.latest(tmp_path / "checkpoints")
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    buffers = {name for name, _ in model.named_buffers()}
    for path in (latest / "model.safetensors", tmp_path / "best" / "model.safetensors"):
        stored = set(load_file(str(path)))
        trained = {k for k in stored if k.startswith(kept)}
        assert trained == {k for k, _ in model.named_parameters() if k.startswith(kept)}
        assert stored - trained <= buffers, sorted(stored - trained)  # and nothing frozen
    exported = load_file(str(tmp_path / "model" / "model.safetensors"))
    body = [k for k in pretrained if k.startswith("bert.encoder.layer.0.")]
    assert body and all(torch.equal(exported[k], pretrained[k]) for k in body)


def test_a_head_only_run_resumes_exactly_from_its_partial_checkpoint(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    spec = _spec(text_spec, bert_dir, text_csvs, strategy="head_only")
    run_job(spec, tmp_path / "straight", events)
    straight = events.train_losses()
    events.clear()
    with pytest.raises(Crash):
        run_job(spec, tmp_path / "resumed", crash_after_checkpoint(4))
    run_job(spec, tmp_path / "resumed", events)
    resumed = events.train_losses()
    assert min(resumed) == 5
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], abs=1e-6)
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_a_changed_frozen_body_refuses_the_checkpoint(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    source = shutil.copytree(bert_dir, tmp_path / "bert")
    spec = _spec(text_spec, source, text_csvs, strategy="head_only")
    with pytest.raises(Crash):
        run_job(spec, tmp_path / "out", crash_after_checkpoint(4))
    weights = load_file(str(source / "model.safetensors"))
    for key in weights:
        if key.startswith("bert.encoder.layer.0."):
            weights[key] = weights[key] + 0.5  # the folder replaced by another checkpoint
    save_file(weights, str(source / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InvalidJobInput, match="frozen part it was trained with differs"):
        run_job(spec, tmp_path / "out", events)


def test_a_plan_with_nothing_frozen_writes_whole_files(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    every = {name for name, _ in model.named_parameters()}
    assert not RunWeights(model, every).partial and not RunWeights(model).partial
    partial = RunWeights(model, {"1.weight", "1.bias"})
    partial.save(model, tmp_path / "w.safetensors")
    assert set(load_file(str(tmp_path / "w.safetensors"))) == {"1.weight", "1.bias"}
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    other[0].load_state_dict(model[0].state_dict())
    partial.load(other, tmp_path / "w.safetensors")
    assert torch.equal(other[1].weight, model[1].weight)
    with pytest.raises(InvalidJobInput, match="frozen part"):
        RunWeights(model, {"1.weight", "1.bias"}).load(
            torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)),
            tmp_path / "w.safetensors",
        )
