"""Through the real service (coordinator, worker process, engine children): the trials of a
sweep that freeze the same prefix compute the frozen features once, on the worker's shared
cache under its --artifacts folder, and the next trial loads them."""

from __future__ import annotations

import yaml
from jobfiles import write_text_job
from test_end_to_end import coordinator, worker  # noqa: F401 (fixtures)

from tunefleet.client import Client


def test_the_second_trial_loads_the_first_ones_features(
    coordinator, worker, tmp_path, tiny_bert, sentiment_data  # noqa: F811
):
    path = write_text_job(tmp_path, tiny_bert, sentiment_data, finetune={"strategy": "head_only"})
    job = yaml.safe_load(path.read_text())
    job["sweep"] = {
        "space": {"optimizer.lr": [1e-3, 1e-2]},
        "algorithm": "grid",
        "max_concurrent": 1,  # one after the other: the second finds the first's entry
    }
    with Client(coordinator.address) as client:
        final = client.submit_sweep(job).wait(timeout=300)
        assert final.state.value == "SUCCEEDED", final.reason
        logs = []
        for trial in sorted(final.trials, key=lambda t: t.number):
            events = client.events(trial.job_id, 0, False)
            logs.append([e.log.message for e in events if e.kind == "log"])

    first = [m for m in logs[0] if m.startswith("feature cache")]
    second = [m for m in logs[1] if m.startswith("feature cache")]
    assert "computed, stored in the shared cache (key " in first[0]
    assert "features from cache (key " in second[0] and "features from cache" in second[1]
    assert (tmp_path / "artifacts" / ".feature-cache").is_dir()
