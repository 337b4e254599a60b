"""Frozen-feature caching: train the top of a model on stored outputs of its frozen bottom.

When a job freezes the bottom of the model (head_only, last_k, the probe epochs of lp_ft, the
early epochs of gradual), every epoch pushes the same examples through the same frozen layers.
`FrozenFeatures` runs that frozen prefix once per example, keeps its outputs (in memory, or in
a memory-mapped file under out_dir/feature_cache beyond a memory budget: feature_store.py) and trains the rest
of the model on them in every epoch; evaluation reads a cache of the eval split the same way.

Semantics. The frozen prefix always runs in eval mode -- dropout off, BatchNorm on its running
statistics -- cached or not, as frozen BatchNorm layers already do (`set_modes`, called after
every ``model.train()``). Its output for an example is then a pure function of the example, so
training on the cache gives the losses that training through the prefix gives, up to float
summation order (cached sequences were computed in other batches, with other padding widths).
``finetune.feature_cache: off`` turns the cache off and changes nothing else.

Where the prefix ends. `leading_chain` reads a model as the modules its forward applies one
after the other: Hugging Face encoders (embeddings, layer 0..N-1), SmallCNN and ResNets (their
top-level children in order) and the ``features`` Sequential of VGG, AlexNet, MobileNet,
EfficientNet, ConvNeXt and DenseNet. The frozen prefix of an epoch is the longest run of links
from the bottom none of whose parameters train. To run the rest on cached outputs, the prefix
links become pass-throughs for the duration of one forward (`_replay`) and the cache is fed in
as the model's input (``inputs_embeds`` for Hugging Face models, the image tensor otherwise):
the model's own forward does everything else, so the suffix computes what it computes uncached.
A self-check on the first batch compares both paths and turns the cache off if they disagree.

Not cached (a log event says why): ``feature_cache: off``, augmentation (the inputs change
every epoch), more than one process, LoRA (adapters train inside the frozen blocks), a model
without a known chain, and a frozen prefix that lasts less than two epochs (one pass through
the prefix costs what building the cache costs). When the prefix shrinks (gradual, lp_ft) its
cache is dropped; a later prefix is cached in turn if it lasts two epochs or more. Nothing is
kept across restarts: a resumed run rebuilds the cache, and spill files are deleted at the
start and the end of a run.

Across jobs. Under a worker (shared_features.py: $TUNEFLEET_FEATURE_CACHE_DIR), a split's
features are first looked up by a content key (prefix weights and boundary, the examples,
device, precision, build batch size, library versions): a hit loads them, skipping the build
and its self-check (an entry is stored only after its own check passed); a miss builds them as
above and stores them for the next job. A one-epoch prefix is then cached too: loading it
costs less than one pass, and building it costs what the pass costs.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tunefleet.worker.engine import forward
from tunefleet.worker.engine.data import is_deterministic
from tunefleet.worker.engine.devices import precision_of
from tunefleet.worker.engine.events import log_event
from tunefleet.worker.engine.feature_store import (
    FeatureStore,
    StoreIndices,
    build_order,
    memory_budget,
    size_text,
)
from tunefleet.worker.engine.progress import ProgressTracker
from tunefleet.worker.engine.shared_features import (
    SharedFeatureCache,
    dataset_fingerprint,
    entry_key,
    library_versions,
    model_fingerprint,
)

MODES = ("auto", "off")
# torchvision models whose forward starts with `self.features(x)`, a Sequential.
_FEATURES_MODELS = (
    "VGG", "AlexNet", "MobileNetV2", "MobileNetV3", "EfficientNet", "ConvNeXt", "DenseNet",
)  # fmt: skip
# Models whose forward applies their top-level children in registration order.
_CHILDREN_MODELS = ("SmallCNN", "ResNet")
_CHECK_RTOL, _CHECK_ATOL = 1e-3, 1e-5


# ----------------------------------------------------------------------------- the chain


@dataclass(frozen=True)
class Link:
    """One module of the chain the forward applies first, with its parameters' full names."""

    path: str
    module: nn.Module
    params: tuple[str, ...]


def leading_chain(model: nn.Module, kind: str) -> list[Link]:
    """The modules the model's forward applies first, one after the other; [] if unknown."""
    paths = _hf_chain(model) if kind == "hf" else _vision_chain(model)
    names = [name for name, _ in model.named_parameters()]
    return [
        Link(path, model.get_submodule(path), tuple(n for n in names if n.startswith(path + ".")))
        for path in paths
    ]


def _hf_chain(model: nn.Module) -> list[str]:
    config = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        return []  # decoders find their last token from input_ids, which a cache lacks
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if base is None or not isinstance(getattr(base, "embeddings", None), nn.Module):
        return []
    n = getattr(config, "num_hidden_layers", None)
    layers = next(
        (p for p, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n),
        None,
    )
    if layers is None:
        return []
    return [f"{prefix}.embeddings"] + [f"{prefix}.{layers}.{i}" for i in range(n)]


def _vision_chain(model: nn.Module) -> list[str]:
    name = type(model).__name__
    if name in _FEATURES_MODELS and isinstance(getattr(model, "features", None), nn.Sequential):
        return [f"features.{child}" for child, _ in model.features.named_children()]
    if name in _CHILDREN_MODELS:
        return [child for child, _ in model.named_children()]
    return []


def frozen_prefix(chain: list[Link], trainable: set[str]) -> list[Link]:
    """The leading links none of whose parameters train; [] when they hold no parameters."""
    prefix: list[Link] = []
    for link in chain:
        if any(p in trainable for p in link.params):
            break
        prefix.append(link)
    return prefix if any(link.params for link in prefix) else []


def _describe(prefix: list[Link]) -> str:
    if len(prefix) == 1:
        return prefix[0].path
    return f"{prefix[0].path} .. {prefix[-1].path}, {len(prefix)} modules"


def _passthrough(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


def _embeddings_passthrough(*args: Any, inputs_embeds: Any = None, **kwargs: Any) -> Any:
    if inputs_embeds is None:  # called positionally, e.g. DistilBERT's embeddings(ids, embeds)
        inputs_embeds = next(a for a in args if torch.is_tensor(a) and a.is_floating_point())
    return inputs_embeds


@contextlib.contextmanager
def _replay(prefix: list[Link], *, hf: bool) -> Iterator[None]:
    """For one forward, the prefix passes its input through: the input *is* its output."""
    saved = [link.module.__dict__.get("forward") for link in prefix]
    for i, link in enumerate(prefix):
        link.module.forward = _embeddings_passthrough if hf and i == 0 else _passthrough
    try:
        yield
    finally:
        for link, forward in zip(prefix, saved, strict=True):
            if forward is None:
                del link.module.forward
            else:
                link.module.forward = forward


class _StopForward(Exception):
    """Raised by a hook once the prefix output is captured: the rest is not needed."""


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _capture(module: nn.Module, run: Callable[[], Any], *, stop: bool) -> tuple[Any, torch.Tensor]:
    """Runs `run()` and returns (its result or None if stopped, `module`'s output)."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        captured["x"] = _first(output)
        if stop:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    result = None
    try:
        result = run()
    except _StopForward:
        pass
    finally:
        handle.remove()
    return result, captured["x"]


# ----------------------------------------------------------------------------- per run


@dataclass
class _Cache:
    key: tuple[str, ...]
    prefix: list[Link]
    train: FeatureStore
    train_loader: Any
    eval: FeatureStore | None = None
    eval_loader: Any = None


class FrozenFeatures:
    """One run's frozen prefix, epoch by epoch, and its cached outputs when caching pays.

    The trainer calls `set_modes` after every ``model.train()``, takes `train_loader(epoch)`
    / `eval_loader()` instead of its own loaders when they are not None, computes the logits
    of a cached batch (one with ``features``) with `cached_logits`, and of an input batch as
    always (forward.py), and calls `release` when training ends.
    """

    def __init__(
        self,
        *,
        spec: Any,
        accelerator: Any,
        model: nn.Module,
        plan: Any,
        kind: str,
        data: Any,
        sampler: Any,
        num_epochs: int,
        cache_dir: Path,
        emit: Callable[[Any], None],
        shared: SharedFeatureCache | None = None,
    ):
        self.accelerator = accelerator
        self.shared = shared  # other jobs' features, by content (shared_features.py)
        self.precision = precision_of(accelerator)  # what the features are computed in
        self._fingerprints: dict[Any, str] = {}
        self.model = model  # as prepared: what the loop calls (autocast, DDP...)
        self.plan, self.kind, self.data, self.sampler = plan, kind, data, sampler
        self.num_epochs = num_epochs
        self.cache_dir = cache_dir
        self.emit = emit
        self.batch_size = spec.train.batch_size
        self.eval_batch_size = spec.eval.batch_size or spec.train.batch_size
        self.num_workers = getattr(data, "num_workers", 0)
        self.budget_bytes = memory_budget()
        self.chain = leading_chain(accelerator.unwrap_model(model), kind)
        self._prefixes: dict[int, list[Link]] = {}
        self._active: _Cache | None = None
        self._noted: set[tuple[str, ...]] = set()
        if accelerator.is_main_process:
            shutil.rmtree(cache_dir, ignore_errors=True)  # an interrupted run's spill files
        self.off_reason = self._off_reason(spec)
        frozen = self.prefix(0)
        if self.off_reason and frozen:
            self.note(
                f"feature cache off: {self.off_reason}; the frozen prefix "
                f"({_describe(frozen)}) runs in eval mode in every step"
            )
        elif not self.chain and (spec.finetune.strategy or "full") != "full":
            self.note(
                f"feature cache: not available for {type(accelerator.unwrap_model(model)).__name__} "
                "(its layer order is not known); frozen layers run in every step"
            )

    def _off_reason(self, spec: Any) -> str | None:
        if (spec.finetune.feature_cache or "auto") == "off":
            return "finetune.feature_cache is off"
        if spec.finetune.strategy == "lora":
            return "LoRA adapters train inside the frozen blocks"
        if not is_deterministic(spec):
            return f"data.augment {spec.data.augment} changes the inputs every epoch"
        if self.accelerator.num_processes > 1:
            return f"{self.accelerator.num_processes} processes (the cache is single-process)"
        return None

    def note(self, message: str) -> None:
        self.emit(log_event(message))

    def prefix(self, epoch: int) -> list[Link]:
        if epoch not in self._prefixes:
            self._prefixes[epoch] = frozen_prefix(self.chain, self.plan.trainable(epoch))
        return self._prefixes[epoch]

    def _key(self, epoch: int) -> tuple[str, ...]:
        return tuple(link.path for link in self.prefix(epoch))

    def set_modes(self, epoch: int) -> None:
        """Frozen prefix in eval mode (see the module docstring), cached or not."""
        for link in self.prefix(epoch):
            link.module.eval()

    # ------------------------------------------------------------------ loaders

    def train_loader(self, epoch: int) -> Any:
        """Batches of cached prefix outputs for `epoch`, or None to train on the inputs."""
        prefix = self.prefix(epoch)
        key = self._key(epoch)
        if self._active is not None and self._active.key != key:
            self.note("feature cache: the frozen prefix changed; dropping its cache")
            self.release()
        if self.off_reason or not prefix:
            return None
        if self._active is None:
            epochs = sum(1 for e in range(epoch, self.num_epochs) if self._key(e) == key)
            # Shared, one epoch pays too: another job may have computed it, or may load it.
            if epochs < (1 if self.shared is not None else 2):
                if key not in self._noted:
                    self._noted.add(key)
                    self.note(
                        f"feature cache: not used; the frozen prefix ({_describe(prefix)}) is "
                        f"needed for {epochs} epoch, and one pass costs what caching costs"
                    )
                return None
            self._active = self._cache_train(prefix, key, epochs)
            if self._active is None:
                return None
        return self._active.train_loader

    def eval_loader(self) -> Any:
        """Cached eval batches for the prefix trained last, or None."""
        cache = self._active
        if cache is None or self.data.eval is None or len(self.data.eval) == 0:
            return None
        if cache.eval_loader is None:
            budget = self.budget_bytes - cache.train.nbytes
            store, seconds, _, shared = self._obtain(self.data.eval, cache.prefix, "eval", budget)
            cache.eval = store
            cache.eval_loader = self._loader(store, self.eval_batch_size, sampler=None)
            if shared.startswith("features from cache"):
                what = f"{shared} for {len(store):,} eval examples, loaded in {seconds:.1f} s"
            else:
                what = f"ran the frozen prefix once over {len(store):,} eval examples in {seconds:.1f} s"
            self.note(
                f"feature cache: {what} ({self._where(store)}); evaluations read it{self._tail(shared)}"
            )
        return cache.eval_loader

    def _cache_train(self, prefix: list[Link], key: tuple[str, ...], epochs: int) -> _Cache | None:
        store, seconds, problem, shared = self._obtain(
            self.data.train, prefix, "train", self.budget_bytes, check=True
        )
        if problem is not None:
            store.close()
            self.off_reason = f"the self-check failed ({problem})"
            self.note(f"feature cache off: {self.off_reason}; training through the prefix")
            return None
        if shared.startswith("features from cache"):
            what = (
                f"{shared} for the frozen prefix ({_describe(prefix)}) over {len(store):,} "
                f"train examples, loaded in {seconds:.1f} s"
            )
        else:
            what = (
                f"ran the frozen prefix ({_describe(prefix)}) once over {len(store):,} train "
                f"examples in {seconds:.1f} s"
            )
        self.note(
            f"feature cache: {what} ({self._where(store)}); the rest of the model trains on it "
            f"for {epochs} epoch{'s' if epochs != 1 else ''}{self._tail(shared)}"
        )
        loader = self._loader(store, self.batch_size, sampler=self.sampler)
        return _Cache(key, prefix, store, loader)

    def _loader(self, store: FeatureStore, batch_size: int, *, sampler: Any) -> Any:
        # Its own generator: drawing the loader's base seed must not move the global RNG
        # (dropout in the trainable part must see the numbers it sees uncached).
        loader = DataLoader(
            StoreIndices(len(store)),
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=store.batch,
            generator=torch.Generator(),
        )
        return self.accelerator.prepare(loader)

    def _where(self, store: FeatureStore) -> str:
        size = size_text(store.nbytes)
        if store.on_disk:
            return f"{size} on disk at {store.spill_path}, over the memory budget"
        return f"{size} in memory"

    # ------------------------------------------------------------------ building

    @staticmethod
    def _tail(shared: str) -> str:
        return f"; {shared}" if shared and not shared.startswith("features from") else ""

    def _obtain(
        self, dataset: Dataset, prefix: list[Link], split: str, budget: int, *, check: bool = False
    ) -> tuple[FeatureStore, float, str | None, str]:
        """`_build`, or the same features from the shared cache: (store, seconds, self-check
        problem, what happened: "" without a shared cache, "features from cache (key K)" or
        "computed, stored in the shared cache (key K)")."""
        if self.shared is None or not self.accelerator.is_main_process:
            return (*self._build(dataset, prefix, split, budget, check=check), "")
        start = time.perf_counter()
        key = self._shared_key(dataset, prefix, split)
        if key is None:
            return (*self._build(dataset, prefix, split, budget, check=check), "not shared "
                    "(the examples' content cannot be read for the key)")  # fmt: skip
        short = key[:16]

        def on_wait() -> None:
            self.note(
                f"feature cache: another job is computing these features (key {short}); waiting"
            )

        with self.shared.locked(key, on_wait):
            store = self.shared.load(key, budget)
            if store is not None:
                return (
                    store,
                    time.perf_counter() - start,
                    None,
                    f"features from cache (key {short})",
                )
            store, seconds, problem = self._build(dataset, prefix, split, budget, check=check)
            if problem is not None:
                return store, seconds, problem, ""
            why_not = self.shared.save(key, store)
        if why_not:
            return store, seconds, None, f"computed, not shared ({why_not})"
        return store, seconds, None, f"computed, stored in the shared cache (key {short})"

    def _shared_key(self, dataset: Dataset, prefix: list[Link], split: str) -> str | None:
        """The content key of `prefix`'s outputs over `dataset` (shared_features.py)."""
        paths = tuple(link.path for link in prefix)
        if paths not in self._fingerprints:
            model = self.accelerator.unwrap_model(self.model)
            self._fingerprints[paths] = model_fingerprint(
                model, list(paths), [link.module for link in prefix]
            )
        if id(dataset) not in self._fingerprints:
            self._fingerprints[id(dataset)] = dataset_fingerprint(dataset, self.data.collate)
        if self._fingerprints[id(dataset)] is None:
            return None
        build_batch = max(self.batch_size, self.eval_batch_size)
        runtime = f"{self.accelerator.device.type}|{self.precision}|batch {build_batch}"
        runtime += f"|{library_versions()}"
        return entry_key(
            self._fingerprints[paths], self._fingerprints[id(dataset)], split=split, runtime=runtime
        )

    def _build(
        self, dataset: Dataset, prefix: list[Link], split: str, budget: int, *, check: bool = False
    ) -> tuple[FeatureStore, float, str | None]:
        """Runs the prefix over `dataset` in eval mode; (store, seconds, self-check problem)."""
        start = time.perf_counter()
        model, device = self.model, self.accelerator.device
        store = FeatureStore(
            len(dataset),
            sequence=self.kind == "hf",
            left_padded=bool(getattr(self.data.collate, "left", False)),
            budget_bytes=budget,
            spill_path=self.cache_dir / f"{split}.bin",
        )
        batches = build_order(dataset, max(self.batch_size, self.eval_batch_size))
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=self.data.collate,
            num_workers=self.num_workers,
            generator=torch.Generator(),
        )
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        problem = None
        progress = ProgressTracker(self.emit, "caching", len(dataset), step=0)  # a follower's bar
        try:
            with torch.no_grad():
                for i, (indices, batch) in enumerate(zip(batches, loader, strict=True)):
                    progress.advance(len(indices))
                    batch = {k: v.to(device) for k, v in batch.items()}
                    run = functools.partial(forward.logits, model, batch, self.kind)
                    if check and i == 0:
                        reference, features = _capture(prefix[-1].module, run, stop=False)
                        problem = self._self_check(model, prefix, batch, features, reference)
                        if problem is not None:
                            break
                    else:
                        _, features = _capture(prefix[-1].module, run, stop=True)
                    if store.sequence:
                        mask = batch["attention_mask"].bool()
                        lengths = mask.sum(1).cpu().numpy()
                        store.add(indices, features[mask], lengths, batch["labels"])
                    else:
                        store.add(
                            indices, features, np.ones(len(indices), np.int64), batch["labels"]
                        )
        finally:
            for module, training in modes:
                module.training = training
        progress.finish()
        store.finish()
        return store, time.perf_counter() - start, problem

    def _self_check(
        self,
        model: nn.Module,
        prefix: list[Link],
        batch: dict,
        features: torch.Tensor,
        reference: torch.Tensor,
    ) -> str | None:
        """Whether replaying the captured prefix output gives the uncached logits."""
        cached = {"features": features, "labels": batch["labels"]}
        if "attention_mask" in batch:
            cached["attention_mask"] = batch["attention_mask"]
        try:
            got = self._cached_logits(model, cached, prefix)
        except Exception as e:  # an architecture whose forward is not what we assume
            return f"{type(e).__name__}: {e}"
        if got.shape != reference.shape:
            return f"logits of shape {tuple(got.shape)}, expected {tuple(reference.shape)}"
        if not torch.allclose(got.float(), reference.float(), rtol=_CHECK_RTOL, atol=_CHECK_ATOL):
            diff = (got.float() - reference.float()).abs().max().item()
            return f"cached logits differ by up to {diff:.2e}"
        return None

    # ------------------------------------------------------------------ forward

    def cached_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of a batch from a cached loader (it has ``features``, the prefix's outputs)."""
        assert self._active is not None, "a cached batch without a cache"
        return self._cached_logits(model, batch, self._active.prefix)

    def _cached_logits(self, model: nn.Module, batch: dict, prefix: list[Link]) -> torch.Tensor:
        with _replay(prefix, hf=self.kind == "hf"):
            if self.kind == "hf":
                out = model(inputs_embeds=batch["features"], attention_mask=batch["attention_mask"])
                return out.logits
            return model(batch["features"])

    def release(self) -> None:
        """Frees the cache (memory and spill files)."""
        cache, self._active = self._active, None
        if cache is not None:
            cache.train.close()
            if cache.eval is not None:
                cache.eval.close()
        if self.accelerator.is_main_process:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
