"""Frozen features shared between jobs (shared_features.py): a second job with the same frozen
prefix loads the first one's features instead of running the frozen layers, and trains exactly
as if it had computed them; the cache is keyed by boundary, safe under concurrency, bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tunefleet.worker.engine import models, run_job
from tunefleet.worker.engine.feature_store import FeatureStore
from tunefleet.worker.engine.shared_features import DIR_ENV, SharedFeatureCache, dataset_fingerprint


class EventLog(list):
    def __call__(self, event) -> None:
        self.append(event)

    def logs(self) -> list[str]:
        return [e.log.message for e in self if e.WhichOneof("kind") == "log"]

    def cache_logs(self) -> list[str]:
        return [m for m in self.logs() if m.startswith("feature cache")]

    def metrics(self) -> list[tuple]:
        return [
            (e.metrics.phase, e.metrics.step, e.metrics.loss, dict(e.metrics.values))
            for e in self
            if e.WhichOneof("kind") == "metrics" and not e.metrics.phase.startswith("progress")
        ]


@pytest.fixture
def body_calls(monkeypatch):
    """Counts forwards of the body's first module (the word embeddings) in every model built."""
    calls = {"n": 0}
    build = models.build_model

    def counting(*args, **kwargs):
        bundle = build(*args, **kwargs)
        embeddings = bundle.model.get_submodule("bert.embeddings.word_embeddings")
        embeddings.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        return bundle

    monkeypatch.setattr(models, "build_model", counting)
    return calls


def test_a_second_job_with_the_same_frozen_prefix_loads_the_features(
    tmp_path, bert_dir, text_csvs, text_spec, monkeypatch, body_calls
):
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "shared"))
    first, second = EventLog(), EventLog()
    spec_a = text_spec(bert_dir, text_csvs, finetune={"strategy": "head_only"},
                       optimizer={"lr": 3e-3}, train={"epochs": 2})  # fmt: skip
    spec_b = text_spec(bert_dir, text_csvs, finetune={"strategy": "head_only"},
                       optimizer={"lr": 1e-2}, train={"epochs": 2})  # fmt: skip
    run_job(spec_a, tmp_path / "a", first)
    assert body_calls["n"] > 0
    computed = first.cache_logs()
    assert "computed, stored in the shared cache (key " in computed[0]
    assert "train examples" in computed[0] and "eval examples" in computed[1]

    body_calls["n"] = 0
    result = run_job(spec_b, tmp_path / "b", second)
    assert body_calls["n"] == 0  # neither training nor evaluation ran the frozen body
    loaded = second.cache_logs()
    assert "features from cache (key " in loaded[0] and "24 train examples" in loaded[0]
    assert "features from cache (key " in loaded[1] and "12 eval examples" in loaded[1]

    # Exactly what computing them gives: the same job without the shared cache.
    monkeypatch.delenv(DIR_ENV)
    alone = EventLog()
    reference = run_job(spec_b, tmp_path / "b-alone", alone)
    assert second.metrics() == alone.metrics()
    assert result.summary["eval_loss"] == reference.summary["eval_loss"]
    assert result.summary["eval_accuracy"] == reference.summary["eval_accuracy"]


def test_the_key_includes_the_boundary_and_one_epoch_jobs_share_too(
    tmp_path, bert_dir, text_csvs, text_spec, monkeypatch, body_calls
):
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "shared"))
    keys, calls = [], []
    # In this 2-layer BERT, last_k k=1 trains the pooler: its frozen prefix (embeddings ..
    # layer 1) is head_only's. k=2 also trains layer 1: a lower boundary, its own entries.
    runs = [{"strategy": "head_only"}, {"strategy": "last_k", "k": 1},
            {"strategy": "last_k", "k": 2}, {"strategy": "last_k", "k": 2}]  # fmt: skip
    for i, finetune in enumerate(runs):
        events = EventLog()
        body_calls["n"] = 0
        run_job(text_spec(bert_dir, text_csvs, finetune=finetune), tmp_path / f"run{i}", events)
        calls.append(body_calls["n"])
        first = events.cache_logs()[0]
        keys.append((first.split("(key ")[1][:16], "features from cache" in first))
        assert "for 1 epoch" in first  # one epoch: cached when shared (another job may load it)
    assert [hit for _, hit in keys] == [False, True, False, True]
    assert keys[0][0] == keys[1][0] != keys[2][0] == keys[3][0]
    assert calls[0] > 0 and calls[1] == 0 and calls[2] > 0 and calls[3] == 0


def _store(n: int, value: float) -> FeatureStore:
    store = FeatureStore(n, sequence=False, left_padded=False, budget_bytes=2**30,
                         spill_path=Path("/nonexistent"))  # fmt: skip
    store.add(
        np.arange(n),
        torch.full((n, 4), value),
        np.ones(n, np.int64),
        torch.zeros(n, dtype=torch.long),
    )
    store.finish()
    return store


def test_first_writer_wins_and_entries_round_trip(tmp_path):
    cache = SharedFeatureCache(tmp_path, 2**30)
    assert cache.save("k", _store(3, 1.0)) is None
    assert cache.save("k", _store(3, 2.0)) is None  # already there: the first stays
    loaded = cache.load("k", budget_bytes=2**30)
    assert torch.equal(loaded.batch([0, 2])["features"], torch.full((2, 4), 1.0))
    mapped = cache.load("k", budget_bytes=0)  # over the budget: memory-mapped, not deleted
    assert mapped.on_disk and torch.equal(mapped.batch([1])["features"], torch.ones(1, 4))
    mapped.close()
    assert (tmp_path / "k" / "rows.bin").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_second_process_waits_for_the_key_being_computed(tmp_path):
    cache = SharedFeatureCache(tmp_path, 2**30)
    waited = []
    inside = threading.Event()

    def first():
        with cache.locked("k", lambda: None):
            inside.set()
            time.sleep(0.3)
            cache.save("k", _store(2, 5.0))

    t = threading.Thread(target=first)
    t.start()
    inside.wait()
    with cache.locked("k", lambda: waited.append(True)):
        found = cache.load("k", 2**30)  # the first one's, once it is done
    t.join()
    assert waited == [True] and found is not None


def test_least_recently_used_entries_are_evicted_past_the_bound(tmp_path):
    one = _store(16, 1.0).nbytes
    cache = SharedFeatureCache(tmp_path, 2 * one)
    cache.save("a", _store(16, 1.0))
    time.sleep(0.02)
    cache.save("b", _store(16, 2.0))
    time.sleep(0.02)
    assert cache.load("a", 2**30) is not None  # a is now the more recently used
    time.sleep(0.02)
    cache.save("c", _store(16, 3.0))
    assert cache.load("b", 2**30) is None
    assert cache.load("a", 2**30) is not None and cache.load("c", 2**30) is not None
    assert cache.save("huge", _store(64, 1.0)).startswith("larger than")


class Items:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_the_data_key_reads_the_examples_content_or_refuses_to_share():
    def images(scale):
        return Items(
            [{"pixel_values": torch.ones(2, 2) * i * scale, "labels": i} for i in range(3)]
        )

    assert dataset_fingerprint(images(1), None) == dataset_fingerprint(images(1), None)
    assert dataset_fingerprint(images(1), None) != dataset_fingerprint(images(2), None)

    class Opaque:  # its repr would not show its content
        pass

    assert dataset_fingerprint(Items([{"x": Opaque(), "labels": 0}]), None) is None
