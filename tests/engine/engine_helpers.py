"""Helpers the engine tests share: the tiny text task's CSVs and a crash on checkpoint."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POS = ["good", "great", "fine", "happy", "love", "nice", "best", "fun"]
NEG = ["bad", "awful", "poor", "sad", "hate", "ugly", "worst", "dull"]
FILLER = ["the", "movie", "was", "really", "very", "a", "plot", "and", "it", "so"]


def make_csv(path: Path, n: int, seed: int = 0, *, ragged: bool = False) -> Path:
    """Two separable classes: each row has two words of its class among filler (4 filler
    words, or 1 to 10 when `ragged`, for batches of uneven lengths)."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = "pos" if i % 2 == 0 else "neg"
            filler = (
                [rng.choice(FILLER) for _ in range(rng.randint(1, 10))]
                if ragged
                else rng.sample(FILLER, 4)
            )
            words = filler + rng.sample(POS if label == "pos" else NEG, 2)
            rng.shuffle(words)
            w.writerow([" ".join(words), label])
    return path


class Crash(Exception):
    """Raised from an event sink: the training process dies mid-run."""


def crash_after_checkpoint(step: int):
    """An event sink that crashes the run once the checkpoint of `step` is saved."""

    def emit(event):
        if event.WhichOneof("kind") == "log" and f"step-{step:07d}" in event.log.message:
            raise Crash

    return emit
