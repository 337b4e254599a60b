"""strategy: lora — PEFT adapters on the tiny BERT and SmallCNN: what trains, what stays
bit-identical, the merged export, the freeze plan table and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_helpers import Crash, crash_after_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file

from tunefleet.worker.engine import load_model, lora, models, run_job
from tunefleet.worker.engine.architectures import quiet_transformers
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.lora import is_lora_param
from tunefleet.worker.engine.plan_preview import plan_table
from tunefleet.worker.engine.weights import FINGERPRINT_KEY, frozen_fingerprint

TARGETS = ("query", "value")


def lora_name(plain: str) -> str:
    """bert...query.weight -> bert...query.base_layer.weight (where PEFT keeps the base)."""
    module, _, leaf = plain.rpartition(".")
    if module.rsplit(".", 1)[-1] in TARGETS:
        return f"{module}.base_layer.{leaf}"
    return plain


def build_lora_model(spec) -> torch.nn.Module:
    """The adapted model as run_job builds it (same seed: same head and adapter init)."""
    from accelerate.utils import set_seed

    set_seed(spec.train.seed)
    task = models.resolve_task(spec)
    return models.build_model(spec, task, 2, ["neg", "pos"]).model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, bert_dir, text_csvs, text_spec):
    out = tmp_path_factory.mktemp("lora")
    spec = text_spec(bert_dir, text_csvs, finetune={"strategy": "lora"}, train={"epochs": 3})
    log: list = []
    result = run_job(spec, out, log.append)
    return out, result, log, spec


def test_only_adapters_and_head_train_and_base_weights_stay_bit_identical(lora_run, bert_dir):
    out, result, log, _ = lora_run
    before = load_file(str(bert_dir / "model.safetensors"))
    state = load_file(str(out / "best" / "model.safetensors"))  # the adapted (unmerged) model
    adapters = {k for k in state if is_lora_param(k)}
    assert len(adapters) == 2 * 2 * 2  # 2 layers x (query, value) x (lora_A, lora_B)
    assert all(".query." in k or ".value." in k for k in adapters)

    head = {k for k in state if k.startswith("classifier.")}  # the new output layer alone
    # The run's weight files leave out what never trains (weights.py): the pretrained body,
    # adapted layers' bases included, is not in the file, and the fingerprint the file
    # records of it is the untouched pretrained body's. (The next test shows the exported
    # model is exactly that body with the trained adapters merged.)
    model = build_lora_model(lora_run[3])  # same seed: the initial adapters and head
    params = dict(model.named_parameters())
    body = [lora_name(k) for k in before if k.startswith("bert.")]  # the pooler included
    assert not any(k in state for k in body)
    assert {k for k in state if k in params} == adapters | head
    with safe_open(str(out / "best" / "model.safetensors"), framework="pt") as f:
        recorded = f.metadata()[FINGERPRINT_KEY]
    assert recorded == frozen_fingerprint(model, set(body))
    initial = model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], initial[k])}
    assert changed == adapters | head
    assert result.summary["steps"] == 18
    assert any(m.log.message.startswith("merged LoRA into 4 layers") for m in log if m.log.message)


def test_export_is_a_plain_merged_model_with_the_adapted_logits(lora_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, _, _, spec = lora_run
    with quiet_transformers():
        exported = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    assert not any("lora" in k or "base_layer" in k for k in exported.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    batch = tokenizer(["a great fun movie", "the awful plot"], return_tensors="pt", padding=True)

    adapted = build_lora_model(spec)
    # The trained part onto the pretrained body: the export must be exactly their merge.
    adapted.load_state_dict(load_file(str(out / "best" / "model.safetensors")), strict=False)
    adapted.eval()
    with torch.no_grad():
        unmerged = adapted(**batch).logits
        merged_model = lora.merge_lora(adapted)
        merged = merged_model(**batch).logits
        from_disk = exported(**batch).logits
    assert not any(is_lora_param(k) for k in merged_model.state_dict())
    assert torch.equal(from_disk, merged)  # the folder holds exactly the merged weights
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)  # merging changes nothing
    assert torch.equal(load_model(out / "model")(**batch).logits, from_disk)


def test_freeze_plan_shows_lora_trainable_counts(lora_run, bert_dir, text_csvs, text_spec):
    _, _, log, _ = lora_run
    report = log[0].report
    assert report.name == "freeze_plan"
    rows = {r.cells[0]: r.cells[2] for r in report.rows}
    # r 8 on 32-wide query and value: (8x32 + 32x8) x 2 = 1,024 adapter params per layer
    assert rows == {
        "embeddings": "no",
        "layer.0": "lora 1,024",
        "layer.1": "lora 1,024",
        "pooler": "no",
        "head": "yes",
    }
    spec = text_spec(
        bert_dir,
        text_csvs,
        finetune={
            "strategy": "lora",
            "lora": {"r": 2, "target_modules": ["query", "key", "value"]},
        },
    )
    text = plan_table(spec)
    assert "strategy lora" in text and "lora 384" in text  # (2x32 + 32x2) x 3


def test_unknown_target_module_names_the_field_and_the_layers(bert_dir, text_csvs, text_spec):
    spec = text_spec(
        bert_dir, text_csvs, finetune={"strategy": "lora", "lora": {"target_modules": ["q_proj"]}}
    )
    with pytest.raises(InvalidJobInput, match=r"target_modules: 'q_proj' .* query"):
        build_lora_model(spec)
    # The head trains fully; adapting it is refused rather than silently doubled.
    spec.finetune.lora.target_modules[:] = ["classifier"]
    with pytest.raises(InvalidJobInput, match="classifier"):
        build_lora_model(spec)


def test_lora_resume_continues_exactly(tmp_path, bert_dir, text_csvs, text_spec, events):
    sections = {
        "finetune": {"strategy": "lora", "lora": {"dropout": 0.1}},
        "train": {"epochs": 2, "checkpoint_every_steps": 4, "keep_checkpoints": 5},
    }
    spec = text_spec(bert_dir, text_csvs, **sections)
    run_job(spec, tmp_path / "straight", events)
    straight = events.train_losses()

    with pytest.raises(Crash):
        run_job(spec, tmp_path / "resumed", crash_after_checkpoint(8))
    events.clear()
    run_job(spec, tmp_path / "resumed", events)
    resumed = events.train_losses()
    assert sorted(resumed) == list(range(9, 13))
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], abs=1e-5)
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_lora_on_a_cnn_adapts_convs_and_exports_a_plain_model(
    tmp_path, smallcnn_checkpoint, image_spec, fake_images, events
):
    spec = image_spec(smallcnn_checkpoint, finetune={"strategy": "lora", "lora": {"r": 4}})
    run_job(spec, tmp_path, events)
    assert any("on 3 layers (stage1.0, stage2.0, stem.0)" in m for m in events.logs())
    rows = {r.cells[0]: r.cells[2] for r in events[0].report.rows}
    assert rows["head"] == "yes" and all(rows[b].startswith("lora ") for b in ("stem", "stage1"))
    state = load_file(str(tmp_path / "best" / "model.safetensors"))
    before = load_file(str(smallcnn_checkpoint))
    # The file holds what may change (weights.py): adapters, head and every buffer. The
    # BatchNorm statistics (kept in eval mode) are unchanged; the frozen bases are left out.
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    for key, value in before.items():
        if not key.startswith("head."):
            base = key.replace(".0.weight", ".0.base_layer.weight")
            if key.endswith(buffers):
                assert torch.equal(state[base], value), key
            else:
                assert base not in state, key
    model = load_model(tmp_path / "model")
    assert set(model.state_dict()) == set(before)  # a plain SmallCNN: merged, no adapters
    assert (
        json.loads(Path(tmp_path / "model" / "tunefleet_model.json").read_text())["spec"][
            "finetune"
        ]["strategy"]
        == "lora"
    )
