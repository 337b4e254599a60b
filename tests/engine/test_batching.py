"""Length-grouped batches (batching.py): a permutation, a pure function of (seed, epoch), one
length per optimizer step, and exact resume, also across an OOM-halved micro-batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import skip_first_batches
from engine_helpers import Crash, crash_after_checkpoint, make_csv
from torch.utils.data import DataLoader

from tunefleet.spec import SpecError, prepare
from tunefleet.worker.engine import run_job
from tunefleet.worker.engine.batching import (
    LengthGroupedSampler,
    LengthSortedSampler,
    length_grouped_order,
)
from tunefleet.worker.engine.data.text import TextCollator, TokenizedTextDataset


def random_lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 60, n)


def padded_tokens(lengths: np.ndarray, order: np.ndarray, batch: int) -> int:
    return sum(
        int(lengths[order[i : i + batch]].max()) * len(order[i : i + batch])
        for i in range(0, len(order), batch)
    )


@pytest.mark.parametrize("n,group", [(1000, 32), (1600, 32), (7, 4), (3, 8), (1, 1), (0, 4)])
def test_order_is_a_permutation(n, group):
    order = length_grouped_order(random_lengths(n), group, seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(n))


def test_order_is_a_function_of_seed_and_epoch():
    lengths = random_lengths(500)
    a = length_grouped_order(lengths, 16, seed=3, epoch=1)
    assert np.array_equal(a, length_grouped_order(lengths, 16, seed=3, epoch=1))
    assert not np.array_equal(a, length_grouped_order(lengths, 16, seed=3, epoch=2))
    assert not np.array_equal(a, length_grouped_order(lengths, 16, seed=4, epoch=1))
    sampler = LengthGroupedSampler(lengths, 16, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) == a.tolist() and len(sampler) == 500


def test_steps_hold_similar_lengths_and_the_longest_goes_first():
    lengths, group = random_lengths(2000), 32
    order = length_grouped_order(lengths, group, seed=0, epoch=0)
    shuffled = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).numpy()
    real = int(lengths.sum())
    # Random batches of lengths 3..59 are ~40% padding; grouped ones almost none.
    assert padded_tokens(lengths, shuffled, group) > 1.5 * real
    assert padded_tokens(lengths, order, group) < 1.05 * real
    steps = [lengths[order[i : i + group]] for i in range(0, 2000, group)]
    assert steps[0].max() == lengths.max()
    # Random steps span ~55 lengths; sorted ones a few (the 400-example last window, ~7
    # examples per length, spans the most).
    assert max(int(s.max() - s.min()) for s in steps[:-1]) <= 8
    # ...yet the steps are not sorted across the epoch (no short-to-long curriculum).
    firsts = [int(s[0]) for s in steps[1:-1]]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_a_partial_last_step_stays_last():
    lengths, group = random_lengths(100), 16
    order = length_grouped_order(lengths, group, seed=0, epoch=0)
    # 100 = 6 full steps + 4: every full step is one sorted run of the window.
    for i in range(0, 96, group):
        step = lengths[order[i : i + group]]
        assert np.array_equal(step, np.sort(step)[::-1])
    assert len(order[96:]) == 4


def test_eval_order_is_longest_first():
    lengths = np.array([3, 9, 1, 9, 4])
    assert list(LengthSortedSampler(lengths)) == [1, 3, 4, 0, 2]


def tokenized(lengths: np.ndarray) -> TokenizedTextDataset:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.arange(offsets[-1], dtype=np.int32) % 1000 + 1
    return TokenizedTextDataset({"input_ids": ids}, offsets, np.arange(len(lengths)) % 3)


def test_resume_mid_epoch_yields_the_same_batches():
    """A restarted process builds a new sampler, skips the consumed batches and gets the rest
    of the epoch exactly (the trainer's `skip_first_batches` path)."""
    data = tokenized(random_lengths(300))

    def loader() -> DataLoader:
        sampler = LengthGroupedSampler(data.lengths, 8, seed=5)
        sampler.set_epoch(2)
        return DataLoader(data, batch_size=4, sampler=sampler, collate_fn=TextCollator(0))

    full = list(loader())
    rest = list(skip_first_batches(loader(), 30))
    assert len(rest) == len(full) - 30
    for a, b in zip(full[30:], rest, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])


def test_default_batch_size_follows_the_model_source():
    """8 for Hugging Face models (TrainingArguments' default: a few thousand examples need
    the steps), 32 for vision models (BatchNorm statistics); an explicit value stays."""
    hf = {
        "name": "t",
        "model": {"source": "hf", "name": "m"},
        "data": {"source": "csv", "train": "/d/t.csv"},
    }
    assert prepare(hf, check_paths=False).train.batch_size == 8
    image = {
        "name": "i",
        "model": {"source": "torchvision", "name": "resnet18"},
        "data": {"source": "torchvision", "name": "MNIST", "root": "/r", "download": True},
    }
    assert prepare(image, check_paths=False).train.batch_size == 32
    # A model from an earlier job: its data tells text (an HF model) from images.
    chained = {**hf, "model": {"source": "job", "job": "job-0123abcd"}}
    assert prepare(chained, check_paths=False).train.batch_size == 8
    chained_image = {**image, "model": {"source": "job", "job": "job-0123abcd"}}
    assert prepare(chained_image, check_paths=False).train.batch_size == 32
    hf["train"] = {"batch_size": 32}
    assert prepare(hf, check_paths=False).train.batch_size == 32


def test_spec_default_and_validation():
    text = {
        "name": "t",
        "model": {"source": "hf", "name": "m"},
        "data": {"source": "csv", "train": "/d/t.csv"},
    }
    # Off unless asked: a grouped step holds one length, and length can follow the class.
    assert prepare(text, check_paths=False).data.group_by_length is False
    probe = {**text, "finetune": {"strategy": "head_only"}}
    assert prepare(probe, check_paths=False).data.group_by_length is False
    last_k = {**text, "finetune": {"strategy": "last_k", "k": 1}}
    assert prepare(last_k, check_paths=False).data.group_by_length is False
    on = {**text, "data": {**text["data"], "group_by_length": True}}
    assert prepare(on, check_paths=False).data.group_by_length is True
    image = {
        "name": "i",
        "model": {"source": "torchvision", "name": "smallcnn"},
        "data": {"source": "torchvision", "name": "MNIST", "root": "/r", "download": True},
    }
    assert not prepare(image, check_paths=False).data.HasField("group_by_length")
    image["data"]["group_by_length"] = True
    with pytest.raises(SpecError, match="data.group_by_length: applies to text data only"):
        prepare(image, check_paths=False)


def test_resume_with_an_oom_halved_micro_batch_keeps_the_grouped_steps(
    tmp_path, bert_nodrop_dir, text_spec, events, monkeypatch
):
    """Ragged text, grouped by length: killed mid-epoch 2, resumed with micro-batch 2 x 2
    accumulation after an injected OOM: the same losses as the straight run. Steps group
    batch x accumulation examples, so halving the micro-batch does not change them."""
    from tunefleet.worker.engine.oom import INJECT_OOM_ENV

    data = (
        make_csv(tmp_path / "train.csv", 24, ragged=True),
        make_csv(tmp_path / "e.csv", 8, 1, ragged=True),
    )
    sections = {"train": {"epochs": 2, "checkpoint_every_steps": 4, "keep_checkpoints": 5}}
    spec = text_spec(bert_nodrop_dir, data, **sections)
    spec.data.group_by_length = True
    run_job(spec, tmp_path / "straight", events)
    straight = events.train_losses()
    assert len(straight) == 12

    with pytest.raises(Crash):
        run_job(spec, tmp_path / "oom", crash_after_checkpoint(8))
    monkeypatch.setenv(INJECT_OOM_ENV, "3")
    events.clear()
    run_job(spec, tmp_path / "oom", events)
    assert any("retrying with micro-batch 2 x 2" in m for m in events.logs())
    resumed = events.train_losses()
    assert sorted(resumed) == list(range(9, 13))
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], abs=1e-4)
