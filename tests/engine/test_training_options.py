"""Training options end to end on the tiny BERT: gradient accumulation, clipping, bf16,
max_steps; and the input format taken from torchvision weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tunefleet.spec import prepare
from tunefleet.worker.engine import models, run_job
from tunefleet.worker.engine.devices import native_cpu_bf16, resolve_precision
from tunefleet.worker.engine.errors import InvalidJobInput


def final_weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(sorted((out / "checkpoints").iterdir())[-1] / "model.safetensors"))


def test_grad_accumulation_equals_the_larger_batch(
    tmp_path, bert_nodrop_dir, text_csvs, text_spec, events
):
    fp32 = {"precision": "no"}  # an exact equality: bf16 rounds by the batch's shape
    big = text_spec(bert_nodrop_dir, text_csvs, train={"batch_size": 8, "epochs": 2, **fp32})
    run_job(big, tmp_path / "big", events)
    want = events.train_losses()
    events.clear()
    accum = text_spec(
        bert_nodrop_dir,
        text_csvs,
        train={"batch_size": 4, "grad_accum_steps": 2, "epochs": 2, **fp32},
    )
    run_job(accum, tmp_path / "accum", events)
    got = events.train_losses()
    assert sorted(got) == sorted(want) == list(range(1, 7))  # optimizer steps, not batches
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-5)
    a, b = final_weights(tmp_path / "big"), final_weights(tmp_path / "accum")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("batch", "accum"), [(4, 3), (2, 6)])
def test_a_short_last_step_is_the_mean_of_its_examples_with_accumulation(
    tmp_path, bert_nodrop_dir, text_spec, events, batch, accum
):
    """30 examples, global batch 12: an epoch's last step has 6. Accelerate divides every
    micro-batch's loss by grad_accum_steps, so that step got half its gradient (2 x 6: 3
    micro-batches, each divided by 6) or, 4 x 3, (mean of 4 + mean of 2) / 3 instead of
    the mean of its 6; and OOM halving (twice the accumulation) changed what that step
    computes."""
    from engine_helpers import make_csv

    data = (make_csv(tmp_path / "train.csv", 30), make_csv(tmp_path / "eval.csv", 6, seed=1))
    sgd = {"name": "sgd", "lr": 0.5, "momentum": 0.0}

    def run(name: str, **train) -> dict[str, torch.Tensor]:
        spec = text_spec(
            bert_nodrop_dir, data, optimizer=sgd, schedule={"name": "constant"},
            train={"epochs": 2, "max_grad_norm": 0.0, "precision": "no", **train},
        )  # fmt: skip
        run_job(spec, tmp_path / name, events)
        return final_weights(tmp_path / name)

    want = run("big", batch_size=12)
    got = run("accum", batch_size=batch, grad_accum_steps=accum)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("max_norm", [1e-3, 0.0])
def test_clipping_bounds_the_first_sgd_update(
    tmp_path, bert_dir, text_csvs, text_spec, events, max_norm
):
    """One plain SGD step moves the weights by lr x the (clipped) gradient norm."""
    spec = text_spec(
        bert_dir,
        text_csvs,
        optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0},
        schedule={"name": "constant"},
        train={"max_steps": 1, "max_grad_norm": max_norm},
    )
    run_job(spec, tmp_path, events)
    before = load_file(str(bert_dir / "model.safetensors"))
    after = final_weights(tmp_path)
    shared = [k for k in before if k.startswith("bert.")]  # the new head has no "before"
    moved = torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in shared)).item()
    if max_norm:
        assert 0 < moved <= 1.0 * max_norm * 1.0001
    else:
        assert moved > 1e-2  # unclipped: far beyond the bound above


def test_bf16_and_max_steps(tmp_path, bert_dir, text_csvs, text_spec, events):
    spec = text_spec(bert_dir, text_csvs, train={"precision": "bf16", "max_steps": 3, "epochs": 5})
    result = run_job(spec, tmp_path, events)
    assert any("bf16 mixed precision" in m for m in events.logs())
    train = [e.metrics for e in events.kind("metrics") if e.metrics.phase == "train"]
    assert [m.step for m in train] == [1, 2, 3] and {m.total_steps for m in train} == {3}
    assert all(torch.isfinite(torch.tensor(m.loss)) for m in train)
    assert result.summary["steps"] == 3
    # Weights stay float32 (autocast computes in bf16; the master weights do not round).
    assert load_file(str(tmp_path / "model" / "model.safetensors"))["classifier.weight"].dtype == (
        torch.float32
    )


def test_precision_auto_trains_in_bf16_where_the_hardware_has_it_and_says_so(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    """The default, `auto`: bf16 autocast on a CPU with AVX512-BF16/AMX (or a bf16 GPU),
    fp32 elsewhere, named in the run line; the weights stay float32 either way."""
    spec = text_spec(bert_dir, text_csvs, train={"max_steps": 2, "epochs": 5})
    assert spec.train.precision == "auto"
    assert resolve_precision(spec) == ("bf16" if native_cpu_bf16() else "no")
    run_job(spec, tmp_path, events)
    run_line = next(m for m in events.logs() if m.startswith("training on"))
    if native_cpu_bf16():
        assert "bf16 mixed precision (train.precision auto: this hardware computes bf16" in run_line
    else:
        assert "fp32 (no mixed precision) (train.precision auto: no native bf16 here)" in run_line
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    for explicit in ("no", "bf16"):
        spec.train.precision = explicit
        assert resolve_precision(spec) == explicit


def test_a_job_takes_its_own_precision_after_another_accelerate_user_in_the_process(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    """An HF Trainer (or any Accelerator) earlier in the same process leaves Accelerate's
    process-wide state at its precision; the job's train.precision must still apply, not
    fail with "AcceleratorState has already been initialized"."""
    from accelerate import Accelerator

    Accelerator(cpu=True, mixed_precision="no")  # as a Trainer run before, in a notebook
    spec = text_spec(bert_dir, text_csvs, train={"precision": "bf16", "max_steps": 1})
    run_job(spec, tmp_path, events)
    assert any("bf16 mixed precision" in m for m in events.logs())


@pytest.mark.parametrize(
    ("arch", "weights", "size"),
    [
        ("resnet18", "IMAGENET1K_V1", 224),
        ("efficientnet_b1", "IMAGENET1K_V2", 240),
        ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", 384),
    ],
)
def test_image_size_and_normalisation_follow_the_weights(tmp_path, arch, weights, size):
    # Resolving the input format reads the weights' metadata only: nothing is downloaded.
    spec = prepare(
        {
            "name": "t",
            "model": {"source": "torchvision", "name": arch, "weights": weights},
            "data": {"source": "imagefolder", "root": str(tmp_path)},
        }
    )
    task = models.resolve_task(spec)
    assert (task.image_size, task.in_channels) == (size, 3)
    assert task.mean == pytest.approx((0.485, 0.456, 0.406))
    assert task.std == pytest.approx((0.229, 0.224, 0.225))
    spec.model.weights = "IMAGENET9K"
    with pytest.raises(InvalidJobInput, match="model.weights: 'IMAGENET9K'"):
        models.resolve_task(spec)


def test_small_cnn_uses_the_dataset_statistics(tmp_path):
    spec = prepare(
        {
            "name": "t",
            "model": {"source": "torchvision", "name": "smallcnn"},
            "data": {"source": "torchvision", "name": "FashionMNIST", "root": str(tmp_path)},
        }
    )
    task = models.resolve_task(spec)
    assert (task.image_size, task.in_channels, task.mean, task.std) == (
        28,
        1,
        (0.2860,),
        (0.3530,),
    )
