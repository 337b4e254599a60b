"""`ftctl plot`: curves of a real job from its stored events, as a PNG."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import pytest
from PIL import Image

from tunefleet.client import cli
from tunefleet.client.errors import TunefleetError
from tunefleet.client.plot import _distinct_lr_series, collect_curves, plot_curves
from tunefleet.client.types import Event, LogLine, Metrics


def _metrics(attempt: int, seq: int, **fields) -> Event:
    return Event(
        "job-1", seq, datetime.now(timezone.utc), attempt, "metrics", Metrics(epoch=0.0, **fields)
    )


def test_ftctl_plot_writes_a_readable_png(trained_job, tmp_path, capsys):
    out = tmp_path / "curves.png"
    code = cli.main(
        ["plot", trained_job.job.id, "-o", str(out), "--coordinator", trained_job.server.address]
    )
    assert code == 0, capsys.readouterr().err
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (880, 990)
        # Not a blank canvas: curves, labels and a legend put many colours on it.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50


def test_curves_of_the_latest_attempt():
    events = [
        _metrics(1, 1, phase="train", step=5, loss=2.0, lr=0.1),
        Event("job-1", 2, None, 1, "log", LogLine("info", "retrying")),
        _metrics(2, 3, phase="train", step=2, loss=1.0, lr=0.2),
        _metrics(2, 4, phase="train", step=4, loss=0.5, lr=0.1, lr_groups={"a": 0.1, "b": 0.01}),
        _metrics(2, 5, phase="eval", step=4, values={"accuracy": 0.9, "loss": 0.3}),
    ]
    curves = collect_curves(events)
    assert curves.attempt == 2
    assert curves.train_loss == [(2, 1.0), (4, 0.5)]
    assert curves.lr == {"lr": [(2, 0.2)], "a": [(4, 0.1)], "b": [(4, 0.01)]}
    assert curves.eval_metrics == {"accuracy": [(4, 0.9)], "loss": [(4, 0.3)]}


def test_nothing_to_plot_and_no_matplotlib_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(TunefleetError, match="no metrics yet"):
        plot_curves(collect_curves([]), tmp_path / "x.png")
    curves = collect_curves([_metrics(1, 1, phase="train", step=1, loss=1.0, lr=0.1)])
    for module in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(TunefleetError, match=r"pip install 'tunefleet\[plot\]'"):
        plot_curves(curves, tmp_path / "x.png")


def test_groups_sharing_a_schedule_are_drawn_once():
    head = [(1, 0.1), (2, 0.05)]
    same = {"head": head, "head.no_decay": list(head)}
    assert _distinct_lr_series(same) == [("learning rate", head)]
    layer = [(1, 0.01), (2, 0.005)]
    assert _distinct_lr_series({**same, "layer.0": layer}) == [
        ("head (+1 groups)", head),
        ("layer.0", layer),
    ]
