"""The training order of an epoch: `EpochShuffleSampler`, and for text length-grouped batches
(less padding, same examples, still random).

A text batch is padded to its longest example, so a randomly drawn batch of short headlines
pays for its one long one: on the topics bench 21% of the tokens the encoder ran were padding.
`LengthGroupedSampler` draws the epoch's order as `EpochShuffleSampler` does (a permutation
of (seed, epoch)), cuts it into windows of ~50 optimizer steps, sorts each window by length,
cuts it into steps and shuffles the steps over the whole epoch. Each step then holds examples
of nearly one length (the window is random, so what a step contains still is), and the order
is a pure function of (lengths, seed, epoch, step size): every process computes the same one,
and a resumed run skips to the same batch, as with the plain shuffle.

Grouped by optimizer step, not by micro-batch: the group is batch_size x processes x
grad_accum_steps examples, so OOM recovery (half the micro-batch, twice the accumulation)
and N processes with batch B vs one with batch N*B see exactly the same steps. The longest
step goes first, so a batch that cannot fit shows at step 1 rather than an hour in.

`LengthSortedSampler` orders evaluation the same way (longest first); metrics do not depend
on the order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from tunefleet.spec.defaults import default_group_by_length

WINDOW_STEPS = 50  # steps sorted together: more means less padding, less mixing of lengths


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG of one epoch's order (`EpochShuffleSampler` draws from the same one)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def length_grouped_order(
    lengths: np.ndarray, group_size: int, seed: int, epoch: int, window_steps: int = WINDOW_STEPS
) -> np.ndarray:
    """A permutation of range(len(lengths)) whose consecutive `group_size` blocks hold
    examples of similar length; the last block is the remainder (n % group_size), if any."""
    lengths = np.asarray(lengths)
    n = len(lengths)
    if group_size < 1 or window_steps < 1:
        raise ValueError("group_size and window_steps must be >= 1")
    g = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g).numpy()
    window = group_size * window_steps
    groups: list[np.ndarray] = []
    for start in range(0, n, window):
        chunk = order[start : start + window]
        # Stable: examples of equal length keep their random order.
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        groups += [chunk[i : i + group_size] for i in range(0, len(chunk), group_size)]
    tail = [groups.pop()] if groups and len(groups[-1]) < group_size else []
    if not groups:
        return np.concatenate(tail) if tail else order
    steps = torch.randperm(len(groups), generator=g).numpy()
    longest = int(np.argmax([lengths[grp].max() for grp in groups]))
    where = int(np.flatnonzero(steps == longest)[0])
    steps[[0, where]] = steps[[where, 0]]
    return np.concatenate([groups[i] for i in steps] + tail)


class LengthGroupedSampler(Sampler[int]):
    """The training order of a text epoch: `length_grouped_order` for (seed, epoch)."""

    def __init__(self, lengths: np.ndarray, group_size: int, seed: int):
        self.lengths = np.asarray(lengths)
        self.group_size, self.seed, self.epoch = group_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = length_grouped_order(self.lengths, self.group_size, self.seed, self.epoch)
        return iter(order.tolist())

    def __len__(self) -> int:
        return len(self.lengths)


class LengthSortedSampler(Sampler[int]):
    """Evaluation order: longest first, ties in index order."""

    def __init__(self, lengths: np.ndarray):
        self.order = np.argsort(-np.asarray(lengths), kind="stable")

    def __iter__(self):
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch).

    Every process computes the same order (accelerate then shards it by batches), and a
    restarted run reproduces the order of any epoch without saving sampler state.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def build_loaders(
    spec: Any, data: Any, num_processes: int
) -> tuple[Sampler[int], torch.Generator, list[DataLoader]]:
    """(train sampler, the train loader's generator, [train loader, eval loader if any]).

    The train order is `LengthGroupedSampler` where the data knows its lengths (text) and
    ``data.group_by_length`` is not off, else `EpochShuffleSampler`."""
    seed = spec.train.seed
    accum = max(spec.train.grad_accum_steps, 1)
    by_length = group_by_length(spec, data)
    if by_length:  # one optimizer step's examples are grouped (module docstring)
        step_examples = spec.train.batch_size * num_processes * accum
        sampler = LengthGroupedSampler(data.train.lengths, step_examples, seed)
    else:
        sampler = EpochShuffleSampler(len(data.train), seed)
    # Worker seeds come from this generator (reseeded per epoch), not the global RNG, so
    # starting an epoch's iterator mid-run does not shift the model's dropout RNG.
    generator = torch.Generator().manual_seed(seed)
    workers = spec.data.num_workers
    train_loader = DataLoader(
        data.train,
        batch_size=spec.train.batch_size,
        sampler=sampler,
        collate_fn=data.collate,
        num_workers=workers,
        generator=generator,
    )
    loaders = [train_loader]
    if data.eval is not None and len(data.eval) > 0:
        loaders.append(
            DataLoader(
                data.eval,
                batch_size=spec.eval.batch_size or spec.train.batch_size,
                sampler=LengthSortedSampler(data.eval.lengths) if by_length else None,
                shuffle=False,
                collate_fn=data.collate,
                num_workers=workers,
                generator=torch.Generator().manual_seed(seed),
            )
        )
    return sampler, generator, loaders


def group_by_length(spec: Any, bundle: Any) -> bool:
    """data.group_by_length (unset: the spec's default, off) where the
    datasets know their lengths (text)."""
    d = spec.data
    wanted = (
        d.group_by_length
        if d.HasField("group_by_length")
        else default_group_by_length(spec.finetune.strategy)
    )
    datasets = (bundle.train, bundle.eval)
    has_lengths = all(hasattr(ds, "lengths") for ds in datasets if ds is not None)
    return wanted and has_lengths
