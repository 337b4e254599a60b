"""Frozen-feature caching: cached runs give the losses of uncached runs, and fall back when
caching would change them or not pay."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from engine_helpers import Crash, crash_after_checkpoint

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine import feature_cache, run_job
from tunefleet.worker.engine.feature_store import MEMORY_ENV, FeatureStore


class EventLog(list):
    """An `emit` that keeps events (as conftest's `events` fixture, several per test)."""

    def __call__(self, event) -> None:
        self.append(event)

    def train_losses(self) -> dict[int, float]:
        return {
            e.metrics.step: e.metrics.loss
            for e in self
            if e.WhichOneof("kind") == "metrics" and e.metrics.phase == "train"
        }

    def logs(self) -> list[str]:
        return [e.log.message for e in self if e.WhichOneof("kind") == "log"]


def with_cache(spec: spec_pb2.JobSpec, mode: str) -> spec_pb2.JobSpec:
    copy = spec_pb2.JobSpec()
    copy.CopyFrom(spec)
    copy.finetune.feature_cache = mode
    return copy


def run_both(spec, tmp_path) -> tuple[EventLog, EventLog, dict, dict]:
    """(events cached, events uncached, summary cached, summary uncached)."""
    on, off = EventLog(), EventLog()
    cached = run_job(with_cache(spec, "auto"), tmp_path / "on", on)
    plain = run_job(with_cache(spec, "off"), tmp_path / "off", off)
    return on, off, cached.summary, plain.summary


def assert_same_training(on: EventLog, off: EventLog, on_summary: dict, off_summary: dict):
    losses_on, losses_off = on.train_losses(), off.train_losses()
    assert sorted(losses_on) == sorted(losses_off)
    for step, loss in losses_off.items():
        assert losses_on[step] == pytest.approx(loss, rel=1e-4, abs=1e-6), step
    for key in ("eval_loss", "eval_accuracy"):
        assert on_summary[key] == pytest.approx(off_summary[key], rel=1e-4, abs=1e-6), key


def cache_logs(events: EventLog) -> list[str]:
    return [m for m in events.logs() if m.startswith("feature cache")]


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize("finetune", [{"strategy": "head_only"}, {"strategy": "last_k", "k": 2}])
def test_cached_text_run_matches_the_uncached_run(
    tmp_path, bert_dir, text_csvs, text_spec, finetune
):
    # bert_dir has dropout 0.1 everywhere: the frozen prefix must run in eval mode in both
    # paths, and the trainable part must draw the same dropout masks.
    spec = text_spec(bert_dir, text_csvs, finetune=finetune, train={"epochs": 3})
    on, off, on_summary, off_summary = run_both(spec, tmp_path)
    assert_same_training(on, off, on_summary, off_summary)

    built = cache_logs(on)
    prefix = "bert.embeddings .. bert.encoder.layer.1, 3 modules"
    if finetune["strategy"] == "last_k":
        prefix = "bert.embeddings .. bert.encoder.layer.0, 2 modules"
    assert f"({prefix}) once over 24 train examples" in built[0]
    assert "B in memory" in built[0] and "for 3 epochs" in built[0]
    assert "once over 12 eval examples" in built[1]
    assert cache_logs(off) == [
        f"feature cache off: finetune.feature_cache is off; the frozen prefix ({prefix}) runs "
        "in eval mode in every step"
    ]
    assert not (tmp_path / "on" / "feature_cache").exists()


@pytest.mark.parametrize(
    ("finetune", "prefix"),
    [
        ({"strategy": "head_only"}, "stem .. pool"),
        ({"strategy": "last_k", "k": 1}, "stem .. stage1"),
    ],
)
def test_cached_smallcnn_run_matches_the_uncached_run(
    tmp_path, smallcnn_checkpoint, image_spec, fake_images, finetune, prefix
):
    spec = image_spec(smallcnn_checkpoint, finetune=finetune, train={"epochs": 2})
    on, off, on_summary, off_summary = run_both(spec, tmp_path)
    assert_same_training(on, off, on_summary, off_summary)
    assert f"({prefix}, " in cache_logs(on)[0] and "32 train examples" in cache_logs(on)[0]


def test_a_cache_over_the_memory_budget_spills_to_disk_with_the_same_results(
    tmp_path, bert_dir, text_csvs, text_spec, monkeypatch
):
    spec = text_spec(bert_dir, text_csvs, finetune={"strategy": "last_k", "k": 1})
    spec.train.epochs = 2
    memory = EventLog()
    run_job(spec, tmp_path / "memory", memory)
    monkeypatch.setenv(MEMORY_ENV, "0.001")  # ~1 kB: every cache goes to disk
    disk = EventLog()
    result = run_job(spec, tmp_path / "disk", disk)
    spilled = cache_logs(disk)
    assert f"on disk at {tmp_path / 'disk' / 'feature_cache' / 'train.bin'}" in spilled[0]
    assert "on disk" in spilled[1]
    assert disk.train_losses() == pytest.approx(memory.train_losses(), rel=1e-6)
    assert result.summary["eval_loss"] > 0
    assert not (tmp_path / "disk" / "feature_cache").exists()  # removed when training ends


# ----------------------------------------------------------------------------- resume


def test_resume_rebuilds_the_cache_and_continues_exactly(tmp_path, bert_dir, text_csvs, text_spec):
    spec = text_spec(
        bert_dir,
        text_csvs,
        finetune={"strategy": "last_k", "k": 1},
        train={"epochs": 3, "checkpoint_every_steps": 4, "keep_checkpoints": 5},
    )
    straight = EventLog()
    run_job(spec, tmp_path / "straight", straight)

    with pytest.raises(Crash):  # 2 batches into epoch 2, with the cache in use
        run_job(spec, tmp_path / "resumed", crash_after_checkpoint(8))
    resumed = EventLog()
    run_job(spec, tmp_path / "resumed", resumed)
    assert any("resumed from step-0000008" in m for m in resumed.logs())
    assert (
        "24 train examples" in cache_logs(resumed)[0] and "for 2 epochs" in cache_logs(resumed)[0]
    )
    losses = resumed.train_losses()
    assert sorted(losses) == list(range(9, 19))
    for step, loss in losses.items():
        assert loss == pytest.approx(straight.train_losses()[step], abs=1e-5)


# ----------------------------------------------------------------------------- fallbacks


def test_augmented_images_are_not_cached(tmp_path, smallcnn_checkpoint, image_spec, fake_images):
    spec = image_spec(
        smallcnn_checkpoint, finetune={"strategy": "head_only"}, data={"augment": "light"}
    )
    spec.train.epochs = 2
    events = EventLog()
    run_job(spec, tmp_path, events)
    assert cache_logs(events) == [
        "feature cache off: data.augment light changes the inputs every epoch; the frozen "
        "prefix (stem .. pool, 4 modules) runs in eval mode in every step"
    ]


def test_gradual_unfreezing_one_block_per_epoch_is_not_worth_caching(
    tmp_path, bert_dir, text_csvs, text_spec
):
    spec = text_spec(bert_dir, text_csvs, finetune={"strategy": "gradual", "unfreeze_every": 1})
    spec.train.epochs = 3
    events = EventLog()
    run_job(spec, tmp_path, events)
    logs = cache_logs(events)
    # Epochs 1-2 (head, then + the pooler, which is past the encoder) share the prefix
    # embeddings .. layer.1; each later prefix lasts one epoch and is not worth a cache.
    assert "(bert.embeddings .. bert.encoder.layer.1, 3 modules)" in logs[0]
    assert "for 2 epochs" in logs[0]
    later = [m for m in logs[1:] if "dropping its cache" not in m and "eval examples" not in m]
    assert later and all("not used" in m and "for 1 epoch" in m for m in later)


def test_lp_ft_caches_the_probe_epochs_then_trains_through_the_model(
    tmp_path, bert_dir, text_csvs, text_spec
):
    spec = text_spec(
        bert_dir, text_csvs, finetune={"strategy": "lp_ft", "probe_epochs": 2}, train={"epochs": 3}
    )
    on, off, on_summary, off_summary = run_both(spec, tmp_path)
    assert_same_training(on, off, on_summary, off_summary)
    logs = cache_logs(on)
    assert "for 2 epochs" in logs[0]
    assert "feature cache: the frozen prefix changed; dropping its cache" in logs


def test_a_failed_self_check_falls_back_to_the_uncached_path(
    tmp_path, bert_dir, text_csvs, text_spec, monkeypatch
):
    # As if the model's forward did more between its layers than the chain assumes.
    monkeypatch.setattr(feature_cache, "_replay", lambda prefix, hf: contextlib.nullcontext())
    spec = text_spec(bert_dir, text_csvs, finetune={"strategy": "head_only"}, train={"epochs": 2})
    on, off, on_summary, off_summary = run_both(spec, tmp_path)
    assert_same_training(on, off, on_summary, off_summary)
    (message,) = cache_logs(on)
    assert message.startswith("feature cache off: the self-check failed (cached logits differ")


# ----------------------------------------------------------------------------- storage


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("budget", [1 << 20, 0])
def test_feature_store_pads_like_the_text_collate(tmp_path, left, budget):
    lengths = np.array([3, 1, 4, 2])
    rows = torch.arange(float(lengths.sum() * 2)).reshape(-1, 2)
    store = FeatureStore(
        4, sequence=True, left_padded=left, budget_bytes=budget, spill_path=tmp_path / "f.bin"
    )
    store.add(np.array([2, 0]), rows[:7], lengths[[2, 0]], torch.tensor([1, 0]))
    store.add(np.array([3, 1]), rows[7:], lengths[[3, 1]], torch.tensor([1, 1]))
    store.finish()
    assert store.on_disk == (budget == 0)

    batch = store.batch([1, 2])
    assert batch["labels"].tolist() == [1, 1]
    ex1, ex2 = rows[9:10], rows[:4]  # example 1 (1 token), example 2 (4 tokens)
    padded = torch.cat([torch.zeros(3, 2), ex1]) if left else torch.cat([ex1, torch.zeros(3, 2)])
    assert torch.equal(batch["features"][0], padded)
    assert torch.equal(batch["features"][1], ex2)
    assert batch["attention_mask"].tolist() == (
        [[0, 0, 0, 1], [1, 1, 1, 1]] if left else [[1, 0, 0, 0], [1, 1, 1, 1]]
    )
    store.close()
    assert not (tmp_path / "f.bin").exists()
