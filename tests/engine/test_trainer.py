"""run_job end to end on tiny models: strategies, BatchNorm, schedules, resume, early stopping,
export, compression and the CLI's error contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_helpers import Crash, crash_after_checkpoint
from safetensors.torch import load_file

from tunefleet.spec import spec_to_dict
from tunefleet.worker.engine import load_model, run_job
from tunefleet.worker.engine.__main__ import main as engine_main
from tunefleet.worker.engine.architectures import quiet_transformers
from tunefleet.worker.engine.events import read_events
from tunefleet.worker.engine.schedules import LrSchedule


def pretrained(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def exported_hf(out: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(out / "model").state_dict()


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if k in after and not torch.equal(before[k], after[k])}


BODY_LAYER = {
    "embeddings": "bert.embeddings.",
    "layer.0": "bert.encoder.layer.0.",
    "layer.1": "bert.encoder.layer.1.",
    "pooler": "bert.pooler.",
}


@pytest.mark.parametrize(
    ("finetune", "trained"),
    [
        ({"strategy": "head_only"}, set()),  # the new output layer alone: a linear probe
        ({"strategy": "last_k", "k": 1}, {"pooler"}),
        ({"strategy": "last_k", "k": 2}, {"layer.1", "pooler"}),
        ({"strategy": "full"}, {"embeddings", "layer.0", "layer.1", "pooler"}),
    ],
)
def test_strategies_train_exactly_their_params_and_leave_the_rest_bit_identical(
    tmp_path, bert_dir, text_csvs, text_spec, events, finetune, trained
):
    spec = text_spec(bert_dir, text_csvs, finetune=finetune)
    run_job(spec, tmp_path, events)

    assert events[0].report.name == "freeze_plan"
    before, after = pretrained(bert_dir), exported_hf(tmp_path)
    body = [k for k in before if k.startswith("bert.")]
    want = {k for k in body if any(k.startswith(BODY_LAYER[b]) for b in trained)}
    assert changed(before, after) & set(body) == want
    assert len(want) == sum(1 for k in body if any(k.startswith(BODY_LAYER[b]) for b in trained))


def test_patterns_strategy_counts(tmp_path, bert_dir, text_csvs, text_spec, events):
    spec = text_spec(
        bert_dir,
        text_csvs,
        finetune={
            "strategy": "patterns",
            "trainable": [r"layer\.0\.", "classifier"],
            "frozen": ["LayerNorm"],
        },
    )
    run_job(spec, tmp_path, events)
    before, after = pretrained(bert_dir), exported_hf(tmp_path)
    want = {k for k in before if "layer.0." in k and "LayerNorm" not in k}
    assert len(want) == 12  # q, k, v, attn-out, intermediate, out: weight + bias
    assert changed(before, after) == want | {"classifier.weight", "classifier.bias"}


@pytest.mark.parametrize(
    ("finetune", "after_epoch_1", "after_epoch_2"),
    [
        # head alone (a true probe: the pooler stays frozen), then one more block from the top
        ({"strategy": "gradual", "unfreeze_every": 1}, set(), {"pooler"}),
        (
            {"strategy": "lp_ft", "probe_epochs": 1},
            set(),
            {"embeddings", "layer.0", "layer.1", "pooler"},
        ),
    ],
)
def test_dynamic_strategies_unfreeze_on_schedule(
    tmp_path, bert_dir, text_csvs, text_spec, events, finetune, after_epoch_1, after_epoch_2
):
    spec = text_spec(
        bert_dir, text_csvs, finetune=finetune, train={"epochs": 2}, eval={"every_steps": 0}
    )
    run_job(spec, tmp_path, events)
    before = pretrained(bert_dir)
    steps_per_epoch = 24 // 4

    def trained_blocks(step: int) -> set[str]:
        state = load_file(str(tmp_path / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))
        diff = changed(before, state)
        return {b for b, prefix in BODY_LAYER.items() if any(k.startswith(prefix) for k in diff)}

    assert trained_blocks(steps_per_epoch) == after_epoch_1
    assert trained_blocks(2 * steps_per_epoch) == after_epoch_2
    assert any("freeze plan now trains" in m for m in events.logs())


@pytest.mark.parametrize(
    ("finetune", "frozen_blocks"), [({"strategy": "last_k", "k": 1}, ("stem", "stage1"))]
)
def test_frozen_batchnorm_keeps_running_stats(
    tmp_path, smallcnn_checkpoint, image_spec, fake_images, events, finetune, frozen_blocks
):
    spec = image_spec(smallcnn_checkpoint, finetune=finetune, train={"epochs": 2})
    result = run_job(spec, tmp_path, events)
    before = load_file(str(smallcnn_checkpoint))
    after = load_model(tmp_path / "model").state_dict()
    for key, value in before.items():
        if key.split(".")[0] in frozen_blocks:
            assert torch.equal(after[key], value), key  # weights and running_mean/var/count
        elif key.startswith("stage2"):
            assert not torch.equal(after[key], value), key
    assert after["stage2.1.num_batches_tracked"].item() > 1000
    assert result.summary["eval_accuracy"] >= 0.5


def test_lr_in_events_follows_schedule_and_layerwise_decay(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    spec = text_spec(
        bert_dir,
        text_csvs,
        schedule={"name": "linear", "warmup_steps": 2},
        finetune={"strategy": "full", "layerwise_lr_decay": 0.5},
        train={"epochs": 2},
    )
    run_job(spec, tmp_path, events)
    train = [e.metrics for e in events.kind("metrics") if e.metrics.phase == "train"]
    schedule = LrSchedule("linear", total_steps=12, warmup_steps=2)
    assert [m.step for m in train] == list(range(1, 13))
    for m in train:
        lr_t = 3e-3 * schedule.multiplier(m.step)
        assert m.lr == pytest.approx(lr_t)
        assert m.lr_groups["layer.0"] == pytest.approx(lr_t * 0.125)  # 3 blocks from the top
        assert m.total_steps == 12 and m.samples_per_s > 0


@pytest.mark.parametrize("crash_step", [8, 6])  # mid-epoch 2 (skips 2 batches); an epoch end
def test_resume_continues_exactly(tmp_path, bert_dir, text_csvs, text_spec, events, crash_step):
    """12 steps straight vs. killed after a checkpoint + resumed: same losses, same weights."""
    sections = {"train": {"epochs": 2, "checkpoint_every_steps": 4, "keep_checkpoints": 5}}
    spec = text_spec(bert_dir, text_csvs, **sections)
    run_job(spec, tmp_path / "straight", events)
    straight = events.train_losses()
    assert len(straight) == 12

    with pytest.raises(Crash):
        run_job(spec, tmp_path / "resumed", crash_after_checkpoint(crash_step))
    (tmp_path / "resumed" / "checkpoints" / "step-0000012.tmp").mkdir()  # debris of a crash
    events.clear()
    run_job(spec, tmp_path / "resumed", events)
    assert any(f"resumed from step-{crash_step:07d}" in m for m in events.logs())
    resumed = events.train_losses()
    assert sorted(resumed) == list(range(crash_step + 1, 13))
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], abs=1e-5)
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step-0000012" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step-0000012" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_a_checkpoint_copied_alone_to_a_fresh_folder_resumes_with_its_best_weights(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    """Another worker without the shared file system gets the checkpoint folder only (as
    worker/checkpoint_sync.py downloads it): the run picks and exports what a straight run
    does, because the best weights so far travel inside the checkpoint."""
    import shutil

    # lr 2: the eval loss is best at step 8, then worse: the export is not the last step.
    spec = text_spec(
        bert_dir, text_csvs, optimizer={"lr": 2.0}, schedule={"name": "constant"},
        train={"epochs": 2, "checkpoint_every_steps": 4}, eval={"every_steps": 2, "metric": "loss"},
    )  # fmt: skip
    straight = run_job(spec, tmp_path / "straight", events)
    assert straight.summary["selected_step"] == 8 < straight.summary["steps"]
    with pytest.raises(Crash):
        run_job(spec, tmp_path / "first-host", crash_after_checkpoint(8))
    moved = tmp_path / "other-host" / "checkpoints" / "step-0000008"
    shutil.copytree(tmp_path / "first-host" / "checkpoints" / "step-0000008", moved)
    assert (moved / "best.safetensors").is_file()
    resumed = run_job(spec, tmp_path / "other-host", events)
    assert resumed.summary["selected_step"] == straight.summary["selected_step"]
    result = json.loads((tmp_path / "other-host" / "result.json").read_text())
    assert (
        result["selection"]
        == json.loads((tmp_path / "straight" / "result.json").read_text())["selection"]
    )
    a, b = exported_hf(tmp_path / "straight"), exported_hf(tmp_path / "other-host")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_no_resume_starts_over_and_a_finished_run_only_exports_again(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    spec = text_spec(bert_dir, text_csvs, train={"checkpoint_every_steps": 2})
    with pytest.raises(Crash):
        run_job(spec, tmp_path, crash_after_checkpoint(4))
    run_job(spec, tmp_path, events, resume=False)
    assert sorted(events.train_losses()) == list(range(1, 7))
    assert not any("resumed" in m for m in events.logs())

    # Killed after training, before result.json: the rerun resumes at the end and exports.
    (tmp_path / "result.json").unlink()
    events.clear()
    result = run_job(spec, tmp_path, events)
    assert events.train_losses() == {}
    assert result.summary["steps"] == 6 and (tmp_path / "result.json").is_file()


def test_early_stopping_and_best_checkpoint(tmp_path, bert_dir, text_csvs, text_spec, events):
    spec = text_spec(
        bert_dir,
        text_csvs,
        optimizer={"lr": 1e-12},
        eval={"every_steps": 1, "early_stopping_patience": 2, "metric": "accuracy"},
        train={"epochs": 3},
    )
    result = run_job(spec, tmp_path, events)
    # lr 1e-12: every evaluation ties step 1's, loss included (bit for bit). No improvement
    # at 2 and 3, so it stops; a full tie exports the later step (selection.py).
    assert result.summary["steps"] == 3
    assert result.summary["best_step"] == 3
    assert any(m.startswith("early stopping at step 3") for m in events.logs())
    assert (tmp_path / "best" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def trained_text(tmp_path_factory, bert_dir, text_csvs, text_spec):
    """A run that learns the tiny sentiment task."""
    out = tmp_path_factory.mktemp("trained")
    spec = text_spec(bert_dir, text_csvs, train={"epochs": 8})
    log: list = []
    result = run_job(spec, out, log.append)
    return out, result, log, spec


def test_result_summary_and_events(trained_text):
    out, result, log, _ = trained_text
    assert result.summary["eval_accuracy"] == 1.0
    assert set(result.summary) >= {
        "eval_loss",
        "eval_macro_f1",
        "train_samples_per_s",
        "steps",
        "best_step",
    }
    assert result.artifacts == {
        "model": str(out / "model"),
        "checkpoints": str(out / "checkpoints"),
        "spec": str(out / "spec.json"),
    }
    written = json.loads((out / "result.json").read_text())
    assert written["artifacts"] == result.artifacts and written["summary"] == result.summary
    # Which step was exported and why (selection.py); the summary carries numbers only.
    assert written["selection"]["step"] == result.summary["selected_step"]
    assert log[0].report.name == "freeze_plan" and "layer.1" in log[0].report.text
    evals = [
        e.metrics for e in log if e.WhichOneof("kind") == "metrics" and e.metrics.phase == "eval"
    ]
    assert len(evals) == 8 and set(evals[0].values) == {"loss", "accuracy", "macro_f1"}
    trains = [
        e.metrics for e in log if e.WhichOneof("kind") == "metrics" and e.metrics.phase == "train"
    ]
    accuracies = [m.values["accuracy"] for m in trains]  # from the training logits
    assert all(0.0 <= a <= 1.0 for a in accuracies) and accuracies[-1] >= 0.9
    assert len(list((out / "checkpoints").iterdir())) == 2  # keep_checkpoints


def test_exported_hf_folder_loads_with_transformers_and_predicts(trained_text):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, _, _, _ = trained_text
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    batch = tokenizer(
        ["a great fun movie", "the awful plot was so bad"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        ids = model(**batch).logits.argmax(-1).tolist()
    assert [model.config.id2label[i] for i in ids] == ["pos", "neg"]
    meta = json.loads((out / "model" / "tunefleet_model.json").read_text())
    assert meta["kind"] == "hf" and meta["labels"] == ["neg", "pos"] and meta["num_labels"] == 2
    assert meta["spec"]["name"] == "tiny"
    reloaded = load_model(out / "model")
    assert not reloaded.training
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)


def test_hidden_head_round_trips_through_load_model(
    tmp_path, smallcnn_checkpoint, image_spec, fake_images, events
):
    spec = image_spec(smallcnn_checkpoint, model={"head": {"hidden": 16, "dropout": 0.2}})
    run_job(spec, tmp_path, events)
    model = load_model(tmp_path / "model")
    assert isinstance(model.head, torch.nn.Sequential)
    weights = load_file(str(tmp_path / "best" / "model.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 2)


def test_hf_hidden_head_round_trips_through_load_model(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    spec = text_spec(bert_dir, text_csvs, model={"head": {"hidden": 8}}, train={"max_steps": 2})
    run_job(spec, tmp_path, events)
    model = load_model(tmp_path / "model")
    weights = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert model.classifier[0].out_features == 8
    assert torch.equal(model.classifier[0].weight, weights["classifier.0.weight"])


def test_source_job_continues_from_an_exported_model(
    tmp_path, trained_text, text_csvs, text_spec, events
):
    out, _, _, _ = trained_text
    # As the coordinator hands it over: model.name rewritten to the source job's model folder.
    spec = text_spec(
        out / "model", text_csvs, model={"source": "job", "job": "job-1"}, train={"max_steps": 2}
    )
    run_job(spec, tmp_path, events)
    assert "new head" in events.logs()[0]
    assert json.loads((tmp_path / "model" / "tunefleet_model.json").read_text())["kind"] == "hf"


def test_source_job_torchvision_gets_a_new_head_size(
    tmp_path, smallcnn_checkpoint, image_spec, fake_images, events
):
    run_job(image_spec(smallcnn_checkpoint), tmp_path / "first", events)
    first = load_model(tmp_path / "first" / "model").state_dict()
    spec = image_spec(
        smallcnn_checkpoint,
        model={"num_labels": 4, "checkpoint": ""},
        finetune={"strategy": "head_only"},
    )
    spec.model.source, spec.model.name, spec.model.job = (
        "job",
        str(tmp_path / "first" / "model"),
        "j1",
    )
    run_job(spec, tmp_path / "second", events)
    second = load_model(tmp_path / "second" / "model")
    assert second.head.out_features == 4
    for key, value in second.state_dict().items():  # the frozen body is the first job's
        if not key.startswith("head"):
            assert torch.equal(value, first[key]), key
    meta = json.loads((tmp_path / "second" / "model" / "tunefleet_model.json").read_text())
    assert meta["labels"] == ["dark", "bright", "LABEL_2", "LABEL_3"]
    assert meta["task"]["in_channels"] == 1 and meta["task"]["image_size"] == 28


def test_a_checkpoint_that_does_not_fit_is_invalid_input(tmp_path, image_spec, fake_images, events):
    from safetensors.torch import save_model

    from tunefleet.worker.engine.architectures import SmallCNN
    from tunefleet.worker.engine.errors import InvalidJobInput

    path = tmp_path / "rgb.safetensors"
    save_model(SmallCNN(in_channels=3), str(path))
    with pytest.raises(InvalidJobInput, match="model.checkpoint: .* does not fit SmallCNN"):
        run_job(image_spec(path), tmp_path / "out", events)


def test_compression_report_is_emitted(
    tmp_path, smallcnn_checkpoint, image_spec, fake_images, events
):
    spec = image_spec(smallcnn_checkpoint, compression={"quantize": {"method": "dynamic_int8"}})
    result = run_job(spec, tmp_path, events)
    assert "model_int8" in result.artifacts
    assert [e.report.name for e in events.kind("report")] == ["freeze_plan", "compression"]


def test_cli_exits_2_on_invalid_input_and_emits_an_error_event(
    tmp_path, bert_dir, text_csvs, text_spec, capsys
):
    spec = text_spec(bert_dir, text_csvs, finetune={"strategy": "last_k", "k": 1})
    spec.finetune.k = 99  # past validation, as if the model changed under the job
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec_to_dict(spec)))
    code = engine_main(
        [
            "--spec",
            str(spec_path),
            "--out",
            str(tmp_path / "out"),
            "--events",
            str(tmp_path / "ev.jsonl"),
        ]
    )
    assert code == 2
    assert "finetune.k: 99" in capsys.readouterr().err
    last = read_events(tmp_path / "ev.jsonl")[-1]
    assert last.log.level == "error" and "finetune.k" in last.log.message


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_global_batch(
    tmp_path, bert_nodrop_dir, text_csvs, text_spec, events, monkeypatch
):
    """OOM at micro-batch 4 -> 2 x 2 accumulation: the same optimisation, also when resuming
    from a checkpoint that counted its data position in micro-batches of 4."""
    from tunefleet.worker.engine.oom import INJECT_OOM_ENV

    sections = {"train": {"epochs": 2, "checkpoint_every_steps": 4, "keep_checkpoints": 5}}
    spec = text_spec(bert_nodrop_dir, text_csvs, **sections)
    run_job(spec, tmp_path / "straight", events)
    straight = events.train_losses()

    with pytest.raises(Crash):  # a checkpoint at step 8 (mid-epoch 2), at micro-batch 4
        run_job(spec, tmp_path / "oom", crash_after_checkpoint(8))
    monkeypatch.setenv(INJECT_OOM_ENV, "3")
    events.clear()
    result = run_job(spec, tmp_path / "oom", events)
    assert any(
        "out of memory with micro-batch 4: retrying with micro-batch 2 x 2" in m
        for m in events.logs()
    )
    resumed = events.train_losses()
    assert sorted(resumed) == list(range(9, 13))
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], abs=1e-4)
    assert result.summary["steps"] == 12


def test_out_of_memory_at_micro_batch_one_fails_the_job_with_the_field(
    tmp_path, bert_dir, text_csvs, text_spec, events, monkeypatch
):
    from tunefleet.worker.engine.errors import InvalidJobInput
    from tunefleet.worker.engine.oom import INJECT_OOM_ENV

    monkeypatch.setenv(INJECT_OOM_ENV, "1")
    with pytest.raises(
        InvalidJobInput, match="train.batch_size: out of memory with a micro-batch of 1"
    ):
        run_job(text_spec(bert_dir, text_csvs), tmp_path, events)
    # 4 -> 2 -> 1, each said in an event, then the deterministic failure.
    assert sum("out of memory with micro-batch" in m for m in events.logs()) == 2


def test_checkpoints_by_elapsed_time_between_step_checkpoints(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    """checkpoint_every_minutes bounds the work a lost worker costs even without step
    checkpoints; the default (10) never fires in a short run."""
    fast = {"train": {"checkpoint_every_minutes": 1e-9, "keep_checkpoints": 10}}
    run_job(text_spec(bert_dir, text_csvs, **fast), tmp_path / "timed", events)
    timed = sorted(p.name for p in (tmp_path / "timed" / "checkpoints").glob("step-*"))
    assert timed == [f"step-{n:07d}" for n in range(1, 7)]

    default = text_spec(bert_dir, text_csvs, train={"keep_checkpoints": 10})
    assert default.train.checkpoint_every_minutes == 10
    run_job(default, tmp_path / "default", events)
    assert [p.name for p in (tmp_path / "default" / "checkpoints").glob("step-*")] == [
        "step-0000006"
    ]


def test_resume_mid_epoch_is_exact_with_augmented_images(tmp_path, events):
    """Augmentation draws random numbers while a batch loads, and Accelerate's loader loads
    the next batch before the step that checkpoints: the saved RNG state already held the
    next batch's draws, so the resumed run augmented it (and stepped its dropout)
    differently. Each example's augmentation now comes from (seed, epoch, index)."""
    import numpy as np
    from PIL import Image

    from tunefleet.spec import prepare

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in ("cat", "dog"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "img" / split / c / f"{i}.png")
    spec = prepare(
        {
            "name": "augmented",
            "model": {"source": "torchvision", "name": "smallcnn", "init": "random"},
            "data": {
                "source": "imagefolder", "root": str(tmp_path / "img"), "train": "train",
                "eval": "val", "image_size": 32, "augment": "strong",
            },
            "optimizer": {"name": "sgd", "lr": 0.05},
            "train": {"epochs": 2, "batch_size": 4, "checkpoint_every_steps": 2},
        }
    )  # fmt: skip
    run_job(spec, tmp_path / "straight", events)
    with pytest.raises(Crash):
        run_job(spec, tmp_path / "resumed", crash_after_checkpoint(4))  # mid-epoch 1 of 6 steps
    run_job(spec, tmp_path / "resumed", events)
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_the_exported_tokenizer_truncates_where_training_did(tmp_path, bert_dir):
    """data.max_length 16: the saved tokenizer's model_max_length is 16, so
    `truncation=True` at inference cuts where the job's training and evaluation did."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunefleet.worker.engine.export import export_model

    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    own = tokenizer.model_max_length
    folder = export_model(
        model, tmp_path / "model", kind="hf", arch="", labels=["a", "b"], head={},
        spec={"data": {"max_length": 16}}, tokenizer=tokenizer,
    )  # fmt: skip
    saved = AutoTokenizer.from_pretrained(folder)
    assert saved.model_max_length == 16 and tokenizer.model_max_length == own
    assert len(saved("word " * 100, truncation=True)["input_ids"]) == 16


def test_lp_ft_probes_at_probe_lr_then_fine_tunes_the_head_at_its_own(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    """The probe epochs train the new layer alone at finetune.probe_lr (a linear probe's
    lr, by default head_only's), not at the fine-tune's: at 5e-5 a probe epoch barely
    moves from chance. From the first fine-tune step the head is back at head_lr_scale x
    lr; the schedule scales both, and the reported lr stays the job's."""
    spec = text_spec(
        bert_dir,
        text_csvs,
        finetune={"strategy": "lp_ft", "probe_epochs": 1},
        optimizer={"lr": 1e-4},
        train={"epochs": 2},
    )
    assert spec.finetune.probe_lr == pytest.approx(1e-3)  # adamw's head_only default
    run_job(spec, tmp_path, events)
    steps_per_epoch = 24 // 4
    total = 2 * steps_per_epoch
    train = {
        e.metrics.step: e.metrics for e in events.kind("metrics") if e.metrics.phase == "train"
    }
    for step, m in train.items():
        schedule = 1.0 - (step - 1) / total  # linear, no warmup: the step's own lr
        head = 1e-3 if step <= steps_per_epoch else 1e-4
        assert m.lr_groups["head"] == pytest.approx(head * schedule), step
        assert m.lr == pytest.approx(1e-4 * schedule), step
        if step > steps_per_epoch:
            assert m.lr_groups["layer.0"] == pytest.approx(1e-4 * schedule), step
    assert {1, steps_per_epoch, steps_per_epoch + 1, total} <= train.keys()
