"""The fine-tuning run of one job, top to bottom: `run_job`.

    run_job(spec, out_dir, emit)  ->  TrainingRun.setup -> train -> finish

One code path for 1 CPU process, 1 GPU and N processes (Accelerate): the loop never branches
on the device count. Only the main process emits events and writes files.

Data split across processes: each process takes ``train.batch_size`` examples per micro-batch
(accelerate shards whole batches round-robin), so the global batch is batch_size x processes and
2 processes with batch B see exactly the examples of 1 process with batch 2B.

Exact resume: a checkpoint is taken on an optimizer-step boundary and records the epoch and the
number of batches consumed in it. The training order of an epoch is a pure function of
(seed, epoch) (`EpochShuffleSampler`; `batching.LengthGroupedSampler` for text), data
loaders draw their worker seeds from their own generator rather than the global RNG, and
every process's RNG states are saved; so on restart we skip the consumed batches and
continue bit-for-bit (up to float reduction order).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from google.protobuf import json_format
from torch import nn
from torch.utils.data import DataLoader, Sampler

from tunefleet.spec import compresses
from tunefleet.v1 import job_pb2, spec_pb2
from tunefleet.worker.engine import checkpoint, lineage, models, preflight
from tunefleet.worker.engine.batching import LengthGroupedSampler, LengthSortedSampler
from tunefleet.worker.engine.divergence import DivergenceGuard, is_finite
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.events import log_event, metrics_event, report_message_event
from tunefleet.worker.engine.export import export_model
from tunefleet.worker.engine.feature_cache import FrozenFeatures
from tunefleet.worker.engine.freeze import FreezePlan
from tunefleet.worker.engine.host_memory import reuse_freed_memory
from tunefleet.worker.engine.optim import build_optimizer, build_param_groups, group_lrs
from tunefleet.worker.engine.schedules import build_schedule

Emit = Callable[[job_pb2.Event], None]
HF_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXIT_PREEMPTED = 75  # the process's exit code after a SIGTERM checkpoint-and-stop
# Fault injection for the OOM-recovery tests (a CPU cannot run out of GPU memory on cue):
# micro-batches of at least this many examples raise torch.OutOfMemoryError as CUDA would.
INJECT_OOM_ENV = "TUNEFLEET_INJECT_OOM_AT_BATCH"


class Preempted(SystemExit):
    """SIGTERM arrived (the worker drains, or the machine is being taken away): the run wrote
    a checkpoint at an optimizer-step boundary and stops. Being a SystemExit, it ends the
    engine process with EXIT_PREEMPTED; the worker then requeues the job, which resumes from
    that checkpoint."""

    def __init__(self, step: int):
        super().__init__(EXIT_PREEMPTED)
        self.step = step


class SigtermFlag:
    """While entered (in the main thread), SIGTERM only sets a flag, which the training loop
    checks after each optimizer step: stopping mid-step would lose the step, and a signal
    handler cannot safely write a checkpoint."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
            self._installed = False

    def _on_sigterm(self, signum, frame) -> None:
        self.received = True

    def agreed(self, accelerator) -> bool:
        """True if any process got SIGTERM. Every process calls this at the same step, so
        all of them checkpoint and stop together."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor(float(self.received), device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0


@dataclass
class EngineResult:
    artifacts: dict[str, str]
    summary: dict[str, float]


@dataclass
class TrainerState:
    """Where the run is; saved in every checkpoint (trainer_state.json)."""

    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed by this process
    micro_batch_size: int = 0  # examples per micro-batch when batch_in_epoch was counted
    global_step: int = 0  # optimizer steps taken
    finished: bool = False
    best_value: float | None = None
    best_step: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    evals_since_best: int = 0
    last_eval_step: int = -1
    train_samples: float = 0.0  # global examples trained on (for samples/s)
    train_time_s: float = 0.0


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


def run_job(
    spec: spec_pb2.JobSpec, out_dir: Path | str, emit: Emit, *, resume: bool = True
) -> EngineResult:
    """Fine-tune as ``spec`` says, writing checkpoints/, model/ and result.json under out_dir.

    Raises InvalidJobInput for problems with the job's inputs (retrying cannot help).
    """
    from accelerate.state import AcceleratorState, GradientState

    while True:
        try:
            return _run_once(spec, Path(out_dir), emit, resume)
        except torch.OutOfMemoryError as exc:
            smaller = halved_micro_batch(spec)
            if smaller is None:
                raise InvalidJobInput(
                    f"train.batch_size: out of memory with a micro-batch of "
                    f"{spec.train.batch_size} ({exc}); use a smaller model, max_length or "
                    "image size, or more GPUs"
                ) from exc
            emit(
                log_event(
                    f"out of memory with micro-batch {spec.train.batch_size}: retrying with "
                    f"micro-batch {smaller.train.batch_size} x {smaller.train.grad_accum_steps} "
                    "accumulation steps (same global batch), from the newest checkpoint",
                    level="warning",
                )
            )
        finally:
            # Accelerate keeps process-wide singletons; release them so that the next job in
            # this process (tests, the in-process API) can use another precision/accumulation.
            AcceleratorState._reset_state(reset_partial_state=False)
            GradientState._reset_state()
        # Only here, past the except clause: its traceback held the failed run's frames, and
        # with them its model, optimizer and activations.
        _free_accelerator_memory()
        spec, resume = smaller, True


def _run_once(spec: spec_pb2.JobSpec, out_dir: Path, emit: Emit, resume: bool) -> EngineResult:
    run = TrainingRun(spec, out_dir, emit)
    with run.sigterm, reuse_freed_memory(run.accelerator.device.type == "cpu"):
        run.setup(resume=resume)
        run.train()
        return run.finish()


def halved_micro_batch(spec: spec_pb2.JobSpec) -> spec_pb2.JobSpec | None:
    """The spec with half the micro-batch and twice the accumulation, or None at batch 1.

    The global batch (and so the optimisation) stays the same: what OOM recovery may change
    is how a step is computed, never what it computes. Odd batch sizes cannot be split
    evenly, so they are not halved either.
    """
    batch = spec.train.batch_size
    if batch < 2 or batch % 2:
        return None
    smaller = spec_pb2.JobSpec()
    smaller.CopyFrom(spec)
    smaller.train.batch_size = batch // 2
    smaller.train.grad_accum_steps = max(spec.train.grad_accum_steps, 1) * 2
    return smaller


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class TrainingRun:
    def __init__(self, spec: spec_pb2.JobSpec, out_dir: Path, emit: Emit):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.spec = spec
        self.out_dir = out_dir
        self.ckpt_root = out_dir / "checkpoints"
        precision = spec.train.precision or "no"
        if precision == "fp16" and not torch.cuda.is_available():
            raise InvalidJobInput("train.precision: fp16 needs a GPU; use bf16 or no on CPU")
        # gradual/lp_ft change requires_grad between epochs, so DDP must tolerate parameters
        # that get no gradient (see setup: it registers every parameter).
        dynamic = spec.finetune.strategy in ("gradual", "lp_ft")
        # cpu=True is what makes N launched processes form a gloo MULTI_CPU group when there is
        # no GPU (without it each rank trains alone); a job that asked for no GPU stays off them.
        cpu = spec.resources.gpus == 0 or not torch.cuda.is_available()
        self.accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=precision,
            gradient_accumulation_steps=max(spec.train.grad_accum_steps, 1),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=dynamic)],
        )
        main = self.accelerator.is_main_process
        self.emit: Emit = emit if main else (lambda event: None)
        self.state = TrainerState(micro_batch_size=spec.train.batch_size)
        self.last_saved_step = -1
        self.sigterm = SigtermFlag()
        self._inject_oom_at = int(os.environ.get(INJECT_OOM_ENV) or 0)  # 0 = off
        self.identity = lineage.identity(spec)  # recorded in, and checked against, manifests
        self.divergence = DivergenceGuard()

    # ------------------------------------------------------------------ setup

    def setup(self, *, resume: bool) -> None:
        from accelerate.utils import set_seed

        spec, acc = self.spec, self.accelerator
        seed = spec.train.seed
        set_seed(seed)
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        latest = checkpoint.latest(self.ckpt_root) if resume else None
        if latest is not None:
            foreign = lineage.mismatch(checkpoint.read_manifest(latest), self.identity)
            if foreign:
                raise InvalidJobInput(
                    f"will not resume from the checkpoints in {self.ckpt_root}: {foreign}; "
                    "give the job an output folder of its own"
                )
        if latest is None and acc.is_main_process:
            # A fresh start must not mix with an older run's checkpoints or best weights.
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
            shutil.rmtree(self.out_dir / "best", ignore_errors=True)
        acc.wait_for_everyone()

        task = models.resolve_task(spec)
        self.data = _load_data(spec, task)
        num_labels, labels = models.resolve_labels(
            spec, self.data.num_labels, self.data.label_names
        )
        if self.data.num_labels and self.data.num_labels > num_labels:
            raise InvalidJobInput(
                f"model.num_labels: {num_labels} is fewer than the {self.data.num_labels} labels in the data"
            )
        self.bundle = models.build_model(spec, task, num_labels, labels)
        preflight.check_positions(spec, self.bundle.model)
        model = self.bundle.model
        self.plan = FreezePlan.for_model(
            model, self.bundle.kind, spec.finetune, self.bundle.head_path
        )
        self.emit(report_message_event(self.plan.report(model)))
        for note in self.bundle.notes:
            self.emit(log_event(note))
        for note in self.data.notes:  # which data validates and which tests (splits.py)
            self.emit(log_event(note))

        # Static plans freeze before DDP wraps the model (it then ignores frozen parameters);
        # dynamic ones register everything and freeze after.
        model.requires_grad_(True)
        if not self.plan.dynamic:
            self.plan.apply(model, 0)
        groups = build_param_groups(model, self.plan, spec.finetune, spec.optimizer)
        # Metrics report the job's lr as scheduled (optimizer.lr x the schedule), whatever
        # group 0 is scaled by (the new layer's head_lr_scale); every group's in lr_groups.
        lr0 = spec.optimizer.lr
        self._group0_ratio = groups[0]["lr"] / lr0 if lr0 > 0 and groups[0]["lr"] > 0 else 1.0
        optimizer = build_optimizer(groups, spec.optimizer)

        accum = max(spec.train.grad_accum_steps, 1)
        by_length = _group_by_length(spec, self.data)
        if by_length:  # see batching.py: one optimizer step's examples are grouped
            step_examples = spec.train.batch_size * acc.num_processes * accum
            self.sampler = LengthGroupedSampler(self.data.train.lengths, step_examples, seed)
        else:
            self.sampler = EpochShuffleSampler(len(self.data.train), seed)
        # Worker seeds come from this generator (reseeded per epoch), not the global RNG, so
        # starting an epoch's iterator mid-run does not shift the model's dropout RNG.
        self.loader_generator = torch.Generator().manual_seed(seed)
        workers = spec.data.num_workers
        train_loader = DataLoader(
            self.data.train,
            batch_size=spec.train.batch_size,
            sampler=self.sampler,
            collate_fn=self.data.collate,
            num_workers=workers,
            generator=self.loader_generator,
        )
        loaders = [train_loader]
        if self.data.eval is not None and len(self.data.eval) > 0:
            loaders.append(
                DataLoader(
                    self.data.eval,
                    batch_size=spec.eval.batch_size or spec.train.batch_size,
                    sampler=LengthSortedSampler(self.data.eval.lengths) if by_length else None,
                    shuffle=False,
                    collate_fn=self.data.collate,
                    num_workers=workers,
                    generator=torch.Generator().manual_seed(seed),
                )
            )
        self.model, self.optimizer, *prepared = acc.prepare(model, optimizer, *loaders)
        self.train_loader = prepared[0]
        self.eval_loader = prepared[1] if len(prepared) > 1 else None
        self.unwrapped = acc.unwrap_model(self.model)

        self.steps_per_epoch = max(math.ceil(len(self.train_loader) / accum), 1)
        if spec.train.max_steps > 0:
            self.total_steps = spec.train.max_steps
            self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        else:
            self.num_epochs = max(spec.train.epochs, 1)
            self.total_steps = self.num_epochs * self.steps_per_epoch
        schedule = build_schedule(
            spec.schedule, base_lr=spec.optimizer.lr, total_steps=self.total_steps
        )
        # Not passed to accelerator.prepare: its wrapper steps the schedule once per process
        # per optimizer step, while ours counts optimizer steps.
        self.scheduler = schedule.lambda_lr(self.optimizer.optimizer)

        global_batch = spec.train.batch_size * acc.num_processes * accum
        self.emit(
            log_event(
                f"training on {acc.num_processes} process(es) ({acc.distributed_type.value}, "
                f"{acc.device.type}), precision {acc.mixed_precision}, global batch {global_batch}, "
                f"{self.total_steps} optimizer steps"
            )
        )
        # The frozen prefix runs in eval mode; its outputs are cached when that pays.
        self.features = FrozenFeatures(
            spec=spec,
            accelerator=acc,
            model=self.model,
            plan=self.plan,
            kind=self.bundle.kind,
            data=self.data,
            sampler=self.sampler,
            num_epochs=self.num_epochs,
            forward=lambda model, batch: _logits(model, batch, self.bundle.kind),
            cache_dir=self.out_dir / "feature_cache",
            emit=self.emit,
        )
        if latest is not None:
            self._restore(latest)

    def _restore(self, path: Path) -> None:
        ckpt = checkpoint.load(path)
        ckpt.load_model(self.unwrapped)
        optimizer_state, scheduler_state = ckpt.optimizer_state(), ckpt.scheduler_state()
        if optimizer_state is not None:  # None: a finished run, which only exports again
            self.optimizer.load_state_dict(optimizer_state)
        if scheduler_state is not None:
            self.scheduler.load_state_dict(scheduler_state)
        self.state = TrainerState(**ckpt.trainer_state)
        self._rescale_data_position()
        self.last_saved_step = self.state.global_step
        # RNG last: everything above may draw random numbers (e.g. the new head's init).
        if not ckpt.restore_rng(self.accelerator.process_index):
            ckpt.restore_rng(0)
        s = self.state
        self.emit(
            log_event(
                f"resumed from {path.name}: step {s.global_step}, epoch {s.epoch + 1}, "
                f"batch {s.batch_in_epoch} of the epoch"
            )
        )

    def _rescale_data_position(self) -> None:
        """A checkpoint written with another micro-batch size (OOM recovery halved it) counts
        its position in those micro-batches; checkpoints sit on optimizer-step boundaries, so
        the examples consumed convert exactly."""
        s, batch = self.state, self.spec.train.batch_size
        if s.micro_batch_size and s.micro_batch_size != batch:
            consumed = s.batch_in_epoch * s.micro_batch_size
            if consumed % batch:
                raise InvalidJobInput(
                    f"train.batch_size: the checkpoint was written with micro-batch "
                    f"{s.micro_batch_size}; {batch} does not divide its position in the epoch"
                )
            s.batch_in_epoch = consumed // batch
        s.micro_batch_size = batch

    # ------------------------------------------------------------------ train

    def train(self) -> None:
        spec, acc, s = self.spec, self.accelerator, self.state
        log_every = max(spec.train.log_every_steps, 1)
        eval_every = spec.eval.every_steps
        ckpt_every = spec.train.checkpoint_every_steps
        max_norm = spec.train.max_grad_norm
        n_batches = len(self.train_loader)
        self._reset_window()
        self._nonfinite_run = torch.zeros((), device=acc.device, dtype=torch.long)
        self._diverged = torch.zeros((), device=acc.device, dtype=torch.bool)
        self._last_checkpoint_time = time.monotonic()  # setup's time is not training time
        self._step_lrs = group_lrs(self.optimizer)
        trainable_before: set[str] | None = None

        while not s.finished and s.epoch < self.num_epochs:
            epoch = s.epoch
            epoch_loader = self.features.train_loader(epoch) or self.train_loader
            loader = epoch_loader
            if s.batch_in_epoch > 0:
                loader = acc.skip_first_batches(epoch_loader, s.batch_in_epoch)
            self.sampler.set_epoch(epoch)
            self.loader_generator.manual_seed(spec.train.seed * 100_003 + epoch)
            loader.set_epoch(epoch)
            self._train_mode(epoch)
            trainable = self.plan.trainable(epoch)
            if trainable_before is not None and trainable != trainable_before:
                n = self.plan.trainable_numel(self.unwrapped, epoch)
                self.emit(log_event(f"epoch {epoch + 1}: freeze plan now trains {n:,} params"))
            trainable_before = trainable

            for batch in loader:
                with acc.accumulate(self.model):
                    loss, logits = self._loss(self.model, batch)
                    acc.backward(loss)
                    if acc.sync_gradients and max_norm > 0:
                        acc.clip_grad_norm_(self.model.parameters(), max_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                s.batch_in_epoch += 1
                self._window_loss += loss.detach().float()
                # Training accuracy from the logits this step computed anyway; summed on
                # the device, read once per log (no host sync per step).
                self._window_correct += (logits.detach().argmax(-1) == batch["labels"]).sum()
                self._window_batches += 1
                self._window_samples += len(batch["labels"])
                if not acc.sync_gradients:
                    continue
                self._step_lrs = group_lrs(self.optimizer)  # the lrs this step used
                if not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                s.global_step += 1
                # Consecutive non-finite losses, counted on the device (no host sync per
                # step) and checked, agreed by every process, when the window is logged.
                finite = torch.isfinite(loss.detach())
                self._nonfinite_run = torch.where(finite, 0, self._nonfinite_run + 1)
                self._diverged |= self._nonfinite_run >= self.divergence.patience

                if s.global_step % log_every == 0:
                    self._log_train()
                if eval_every > 0 and s.global_step % eval_every == 0:
                    self._evaluate_and_track()
                if self._should_stop():
                    break
                if s.batch_in_epoch < n_batches:
                    due_by_time, sigterm = self._step_flags()
                    if due_by_time or (ckpt_every > 0 and s.global_step % ckpt_every == 0):
                        self.save_checkpoint()
                    if sigterm:
                        self._stop_on_sigterm()

            if s.batch_in_epoch >= n_batches:  # the epoch is complete
                s.epoch += 1
                s.batch_in_epoch = 0
                if eval_every == 0:
                    self._evaluate_and_track()
            if self._should_stop() or s.epoch >= self.num_epochs:
                s.finished = True
            if not s.finished:
                self.save_checkpoint()
                if self.sigterm.agreed(acc):
                    self._stop_on_sigterm()

        # The last stretch: log it, evaluate the final weights, and checkpoint the end state.
        s.finished = True
        if self._window_batches:
            self._log_train()
        if s.last_eval_step != s.global_step:
            self._evaluate_and_track()
        if self.last_saved_step != s.global_step:
            self.save_checkpoint()
        self.features.release()

    def _step_flags(self) -> tuple[bool, bool]:
        """(a checkpoint is due by train.checkpoint_every_minutes, SIGTERM arrived), agreed
        by every process in one reduce per step, so all of them checkpoint or stop at the
        same step: the main process's clock decides the first, any process's signal the
        second."""
        minutes = self.spec.train.checkpoint_every_minutes
        due = minutes > 0 and time.monotonic() - self._last_checkpoint_time >= minutes * 60
        acc = self.accelerator
        if acc.num_processes == 1:
            return due, self.sigterm.received
        flags = torch.tensor(
            [float(due and acc.is_main_process), float(self.sigterm.received)],
            device=acc.device,
        )
        due_by_time, sigterm = (acc.reduce(flags, reduction="sum") > 0).tolist()
        return due_by_time, sigterm

    def _stop_on_sigterm(self) -> None:
        s = self.state
        if self._window_batches:
            self._log_train()  # the loss of the steps since the last log is not lost
        if self.last_saved_step != s.global_step:
            self.save_checkpoint()
        self.emit(
            log_event(
                f"SIGTERM: stopped after step {s.global_step} and saved a checkpoint; the job "
                f"resumes from it (exit {EXIT_PREEMPTED})",
                level="warning",
            )
        )
        raise Preempted(s.global_step)

    def _should_stop(self) -> bool:
        s, spec = self.state, self.spec
        if spec.train.max_steps > 0 and s.global_step >= spec.train.max_steps:
            return True
        patience = spec.eval.early_stopping_patience
        if patience > 0 and s.evals_since_best >= patience:
            if not s.finished:
                self.emit(
                    log_event(
                        f"early stopping at step {s.global_step}: no better {self._metric_name()} "
                        f"in {patience} evaluations (best at step {s.best_step})"
                    )
                )
                s.finished = True
            return True
        return False

    def _train_mode(self, epoch: int) -> None:
        self.model.train()
        self.plan.apply(self.unwrapped, epoch)
        self.features.set_modes(epoch)

    def _loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, logits) of one micro-batch."""
        if self._inject_oom_at and len(batch["labels"]) >= self._inject_oom_at:
            raise torch.OutOfMemoryError(
                f"{INJECT_OOM_ENV}: injected out of memory at micro-batch {len(batch['labels'])}"
            )
        logits = self.features.logits(model, batch).float()
        return F.cross_entropy(logits, batch["labels"]), logits

    # ------------------------------------------------------------------ metrics

    def _reset_window(self) -> None:
        device = self.accelerator.device
        self._window_loss = torch.zeros((), device=device)
        self._window_correct = torch.zeros((), device=device, dtype=torch.long)
        self._window_batches = 0
        self._window_samples = 0
        self._window_start = time.perf_counter()

    def _log_train(self) -> None:
        """Emit the mean loss and training accuracy since the last log over all processes, the
        lrs and throughput."""
        acc, s = self.accelerator, self.state
        elapsed = time.perf_counter() - self._window_start
        stats = torch.stack(
            [
                self._window_loss,
                torch.tensor(float(self._window_batches), device=acc.device),
                torch.tensor(float(self._window_samples), device=acc.device),
                self._window_correct.float(),
                self._diverged.float(),
            ]
        )
        loss_sum, batches, samples, correct, diverged = acc.reduce(stats, reduction="sum").tolist()
        loss = loss_sum / max(batches, 1.0)
        if diverged:
            self.divergence.fail(s.global_step, "loss", loss)
        s.train_samples += samples
        s.train_time_s += elapsed
        lrs = self._step_lrs
        self.emit(
            metrics_event(
                "train",
                step=s.global_step,
                epoch=s.global_step / self.steps_per_epoch,
                total_steps=self.total_steps,
                loss=loss,
                lr=next(iter(lrs.values())) / self._group0_ratio,
                lr_groups=lrs,
                samples_per_s=samples / elapsed if elapsed > 0 else 0.0,
                values={"accuracy": correct / samples} if samples else None,
            )
        )
        self._reset_window()

    def _metric_name(self) -> str:
        return self.spec.eval.metric or "accuracy"

    def evaluate(self) -> dict[str, float] | None:
        """loss, accuracy and macro_f1 on the validation set, over all processes."""
        if self.eval_loader is None:
            return None
        acc = self.accelerator
        self.model.eval()
        losses, preds, labels = [], [], []
        with torch.no_grad():
            for batch in self.features.eval_loader() or self.eval_loader:
                logits = self.features.logits(self.model, batch).float()
                loss = F.cross_entropy(logits, batch["labels"], reduction="none")
                loss, pred, label = acc.gather_for_metrics(
                    (loss, logits.argmax(-1), batch["labels"])
                )
                losses.append(loss.cpu())
                preds.append(pred.cpu())
                labels.append(label.cpu())
        self._train_mode(self.state.epoch)
        return classification_metrics(
            torch.cat(losses), torch.cat(preds), torch.cat(labels), self.bundle.num_labels
        )

    def _evaluate_and_track(self) -> None:
        s = self.state
        if self._window_batches and s.global_step >= self.total_steps:
            self._log_train()  # the final steps' loss, before the final evaluation
        window_time = time.perf_counter() - self._window_start
        metrics = self.evaluate()
        s.last_eval_step = s.global_step
        # Evaluation time is not training time: keep it out of samples/s.
        self._window_start = time.perf_counter() - window_time
        if metrics is None:
            return
        self.emit(
            metrics_event(
                "eval",
                step=s.global_step,
                epoch=s.global_step / self.steps_per_epoch,
                total_steps=self.total_steps,
                values=metrics,
            )
        )
        name = self._metric_name()
        value = metrics[name]
        self.divergence.observe_eval(s.global_step, metrics)
        better = all(is_finite(v) for v in metrics.values()) and (
            s.best_value is None
            or (value < s.best_value if name == "loss" else value > s.best_value)
        )
        if not better:
            s.evals_since_best += 1
            return
        s.best_value, s.best_step, s.best_metrics, s.evals_since_best = (
            value,
            s.global_step,
            metrics,
            0,
        )
        if self.accelerator.is_main_process:
            _save_weights_atomic(self.unwrapped, self.out_dir / "best" / "model.safetensors")
            self.emit(
                log_event(f"new best {name} {value:.4f} at step {s.global_step}; weights saved")
            )

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        """A resumable checkpoint of the current step (see checkpoint.py for the layout)."""
        acc, s = self.accelerator, self.state
        start = time.perf_counter()
        tmp = checkpoint.begin(self.ckpt_root, s.global_step) if acc.is_main_process else None
        acc.wait_for_everyone()
        checkpoint.write_rng(
            tmp or self.ckpt_root / f"step-{s.global_step:07d}.tmp", acc.process_index
        )
        acc.wait_for_everyone()
        if acc.is_main_process:
            path = checkpoint.commit(
                self.ckpt_root,
                s.global_step,
                model=self.unwrapped,
                # A finished run never steps again: skip the optimizer's 2x-model bytes.
                optimizer_state=None if s.finished else self.optimizer.state_dict(),
                scheduler_state=None if s.finished else self.scheduler.state_dict(),
                trainer_state=asdict(s),
                identity=self.identity,
                keep=self.spec.train.keep_checkpoints or 2,
            )
            self.emit(log_event(f"checkpoint saved: {path.name}", level="debug"))
        acc.wait_for_everyone()
        self.last_saved_step = s.global_step
        self._last_checkpoint_time = time.monotonic()
        self._window_start += time.perf_counter() - start

    # ------------------------------------------------------------------ finish

    def finish(self) -> EngineResult:
        """Export the final model (best, else last), compress if asked, write result.json."""
        acc, s, bundle = self.accelerator, self.state, self.bundle
        artifacts: dict[str, str] = {}
        summary: dict[str, float] = {"steps": float(s.global_step)}
        if s.train_time_s > 0:
            summary["train_samples_per_s"] = s.train_samples / s.train_time_s
        for key, value in s.best_metrics.items():
            summary[f"eval_{key}"] = value
        if s.best_step >= 0:
            summary["best_step"] = float(s.best_step)

        if acc.is_main_process:
            best = self.out_dir / "best" / "model.safetensors"
            if s.best_step >= 0 and best.is_file():
                if s.best_step != s.global_step:  # else the weights in memory are the best
                    from safetensors.torch import load_model

                    load_model(self.unwrapped, str(best))
                self.emit(log_event(f"exporting the best model (step {s.best_step})"))
            else:
                self.emit(log_event(f"exporting the last model (step {s.global_step})"))
            for key, value in (self._evaluate_test() or {}).items():
                summary[f"test_{key}"] = value
            model = self.unwrapped.cpu().eval()
            if bundle.lora_targets:
                # Exported models are plain: adapters folded into the weights they adapt.
                model = models.merge_lora(model)
                self.emit(log_event(f"merged LoRA into {len(bundle.lora_targets)} layers"))
            spec_dict = json_format.MessageToDict(self.spec, preserving_proto_field_name=True)
            spec_path = self.out_dir / "spec.json"
            if not spec_path.exists():
                _write_json_atomic(spec_path, spec_dict)

            def export(module: nn.Module, folder: Path) -> None:
                export_model(
                    module,
                    folder,
                    kind=bundle.kind,
                    arch=bundle.arch,
                    labels=bundle.labels,
                    head=bundle.head,
                    task=bundle.task.as_dict(),
                    spec=spec_dict,
                    tokenizer=bundle.tokenizer,
                )

            export(model, self.out_dir / "model")
            artifacts.update(
                model=str(self.out_dir / "model"),
                checkpoints=str(self.ckpt_root),
                spec=str(spec_path),
            )
            if compresses(self.spec):
                extra_artifacts, extra_summary = self._compress(model, export)
                artifacts.update(extra_artifacts)
                summary.update(extra_summary)
            _write_json_atomic(
                self.out_dir / "result.json", {"artifacts": artifacts, "summary": summary}
            )
        acc.wait_for_everyone()
        return EngineResult(artifacts=artifacts, summary=summary)

    def _evaluate_test(self) -> dict[str, float] | None:
        """The test set, once, on the model about to be exported; never used to choose it.

        Main process only: it runs once, after training, with the weights only the main
        process loaded (the best checkpoint's)."""
        test = self.data.test
        if test is None or len(test) == 0:
            return None
        loader = DataLoader(
            test,
            batch_size=self.spec.eval.batch_size or self.spec.train.batch_size,
            shuffle=False,
            collate_fn=self.data.collate,
            num_workers=self.data.num_workers,
        )
        with self.accelerator.autocast():
            metrics = evaluate_module(
                self.unwrapped,
                loader,
                self.bundle.kind,
                self.bundle.num_labels,
                device=self.accelerator.device,
            )
        s = self.state
        self.emit(
            metrics_event(
                "test",
                step=s.global_step,
                epoch=s.global_step / self.steps_per_epoch,
                total_steps=self.total_steps,
                values=metrics,
            )
        )
        return metrics

    def _compress(
        self, model: nn.Module, export: Callable[[nn.Module, Path], None]
    ) -> tuple[dict[str, str], dict[str, float]]:
        from tunefleet.worker.engine import compression
        from tunefleet.worker.engine.recovery import Recovery

        dataset = self.data.eval if self.data.eval is not None else self.data.train
        kind = self.bundle.kind
        batch_size = self.spec.eval.batch_size or self.spec.train.batch_size
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False, collate_fn=self.data.collate
        )
        self.emit(log_event("compressing the final model"))
        result = compression.compress(
            model,
            self.spec.compression,
            kind=kind,
            evaluate=lambda module: evaluate_module(module, loader, kind, self.bundle.num_labels),
            example_batch=next(iter(loader)),
            out_dir=self.out_dir,
            export=export,
            keep=(self.bundle.head_path,),
            recover=Recovery(
                spec=self.spec,
                train=self.data.train,
                collate=self.data.collate,
                kind=kind,
                forward=lambda module, batch: _logits(module, batch, kind),
                device=self.accelerator.device,
                head_path=self.bundle.head_path,
                epoch=max(self.num_epochs - 1, 0),
            ),
        )
        self.emit(report_message_event(result.report))
        return dict(result.artifacts), dict(result.summary)


# ----------------------------------------------------------------------------- helpers


def _load_data(spec: spec_pb2.JobSpec, task: models.TaskInfo) -> Any:
    """data.load_data for this model's input format (a seam that tests replace)."""
    from tunefleet.worker.engine import data

    return data.load_data(
        spec,
        data.Task(
            kind=task.kind,
            tokenizer=task.tokenizer,
            image_size=task.image_size,
            mean=task.mean,
            std=task.std,
            in_channels=task.in_channels,
        ),
    )


def _group_by_length(spec: spec_pb2.JobSpec, data: Any) -> bool:
    """data.group_by_length (unset: on) where the datasets know their lengths (text)."""
    d = spec.data
    wanted = d.group_by_length if d.HasField("group_by_length") else True
    has_lengths = all(hasattr(ds, "lengths") for ds in (data.train, data.eval) if ds is not None)
    return wanted and has_lengths


def _logits(model: nn.Module, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "hf":
        return model(**{k: batch[k] for k in HF_INPUTS if k in batch}).logits
    return model(batch["pixel_values"])


def classification_metrics(
    losses: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor, num_labels: int
) -> dict[str, float]:
    """loss, accuracy, macro_f1 (over the classes present in labels or predictions)."""
    k = max(num_labels, int(labels.max()) + 1, int(preds.max()) + 1)
    confusion = torch.bincount(labels * k + preds, minlength=k * k).reshape(k, k).double()
    tp = confusion.diag()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    f1 = (2 * tp / (2 * tp + fp + fn).clamp(min=1))[present]
    return {
        "loss": losses.double().mean().item(),
        "accuracy": (preds == labels).double().mean().item(),
        "macro_f1": f1.mean().item() if f1.numel() else 0.0,
    }


def evaluate_module(
    module: nn.Module, loader: DataLoader, kind: str, num_labels: int, *, device=None
) -> dict[str, float]:
    """Plain single-process evaluation, on CPU unless `device` is given (compression
    evaluates modified copies; the test set is evaluated once at the end)."""
    module.eval()
    losses, preds, labels = [], [], []
    with torch.no_grad():
        for batch in loader:
            if device is not None:
                batch = {k: v.to(device) for k, v in batch.items()}
            logits = _logits(module, batch, kind).float()
            losses.append(F.cross_entropy(logits, batch["labels"], reduction="none"))
            preds.append(logits.argmax(-1))
            labels.append(batch["labels"])
    return classification_metrics(
        torch.cat(losses), torch.cat(preds), torch.cat(labels), num_labels
    )


def _save_weights_atomic(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)
