"""The fine-tuning run of one job, top to bottom: `run_job`.

    run_job(spec, out_dir, emit)  ->  TrainingRun.setup -> train -> finish

    setup   checkpoint to resume, data, model and freeze plan, optimizer, loaders,
            accelerator.prepare and the lr schedule, the feature cache, restore
    train   per micro-batch: forward (cached prefix outputs or inputs), loss, backward,
            clip, optimizer step; per step: log, evaluate, checkpoint, stop on SIGTERM
    finish  best weights, the test set once, then final_export.py (model/, compression)

Strategies are small modules the loop calls: freeze plans (freeze.py), lr schedules,
the feature cache, OOM recovery (oom.py), preemption, divergence checks.

One code path for 1 CPU process, 1 GPU and N processes (Accelerate): the loop never branches
on the device count. Only the main process emits events and reads or writes the job's folder
(the other ranks may be on machines that do not see it: rank_sync.py).

Data split across processes: each process takes ``train.batch_size`` examples per micro-batch
(accelerate shards whole batches round-robin), so the global batch is batch_size x processes and
2 processes with batch B see exactly the examples of 1 process with batch 2B.

Exact resume: a checkpoint is taken on an optimizer-step boundary and records the epoch and the
number of batches consumed in it. The training order of an epoch is a pure function of
(seed, epoch) (batching.py: `EpochShuffleSampler`, `LengthGroupedSampler` for text), data
loaders draw their worker seeds from their own generator rather than the global RNG, and
every process's RNG states are saved; so on restart we skip the consumed batches and
continue bit-for-bit (up to float reduction order).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from tunefleet.v1 import job_pb2, spec_pb2
from tunefleet.worker.engine import (
    checkpoint,
    data,
    forward,
    lineage,
    models,
    preflight,
    rank_sync,
    selection,
)
from tunefleet.worker.engine.accumulation import StepShare, share_loss
from tunefleet.worker.engine.batching import build_loaders
from tunefleet.worker.engine.checkpoint import TrainerState
from tunefleet.worker.engine.devices import make_accelerator, run_lines
from tunefleet.worker.engine.divergence import DivergenceGuard
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.evaluation import evaluate_dataset, evaluate_prepared
from tunefleet.worker.engine.events import log_event, metrics_event, report_message_event
from tunefleet.worker.engine.feature_cache import FrozenFeatures
from tunefleet.worker.engine.final_export import export_final, write_json_atomic
from tunefleet.worker.engine.freeze import FreezePlan
from tunefleet.worker.engine.host_memory import reuse_freed_memory
from tunefleet.worker.engine.oom import InjectedOom, position_in_batches, retry_on_oom
from tunefleet.worker.engine.optim import (
    build_optimizer,
    build_param_groups,
    group_lrs,
    probe_lr_factors,
    unused_lr_groups,
)
from tunefleet.worker.engine.preemption import EXIT_PREEMPTED, Preempted, SigtermFlag
from tunefleet.worker.engine.progress import ProgressTracker
from tunefleet.worker.engine.schedules import build_schedule
from tunefleet.worker.engine.shared_features import from_env as shared_feature_cache
from tunefleet.worker.engine.train_window import TrainWindow
from tunefleet.worker.engine.weights import RunWeights

Emit = Callable[[job_pb2.Event], None]


@dataclass
class EngineResult:
    artifacts: dict[str, str]
    summary: dict[str, float]


def run_job(
    spec: spec_pb2.JobSpec, out_dir: Path | str, emit: Emit, *, resume: bool = True
) -> EngineResult:
    """Fine-tune as ``spec`` says, writing checkpoints/, model/ and result.json under out_dir.

    Raises InvalidJobInput for problems with the job's inputs (retrying cannot help).
    """
    out_dir = Path(out_dir)
    return retry_on_oom(
        lambda spec, resume: _run_once(spec, out_dir, emit, resume), spec, emit, resume=resume
    )


def _run_once(spec: spec_pb2.JobSpec, out_dir: Path, emit: Emit, resume: bool) -> EngineResult:
    run = TrainingRun(spec, out_dir, emit)
    with run.sigterm, reuse_freed_memory(run.accelerator.device.type == "cpu"):
        run.setup(resume=resume)
        run.train()
        return run.finish()


class TrainingRun:
    def __init__(self, spec: spec_pb2.JobSpec, out_dir: Path, emit: Emit):
        self.spec = spec
        self.out_dir = out_dir
        self.ckpt_root = out_dir / "checkpoints"
        self.best_file = out_dir / "best" / "model.safetensors"  # the best weights so far
        self.accelerator = make_accelerator(spec)
        main = self.accelerator.is_main_process
        self.emit: Emit = emit if main else (lambda event: None)
        self.state = TrainerState(micro_batch_size=spec.train.batch_size)
        self.last_saved_step = -1
        self.sigterm = SigtermFlag()
        self.injected_oom = InjectedOom()  # tests only (oom.py)
        self.identity = lineage.identity(spec)  # recorded in, and checked against, manifests
        self.divergence = DivergenceGuard()

    # ------------------------------------------------------------------ setup

    def setup(self, *, resume: bool) -> None:
        """Model, data, optimizer, loaders, schedule: everything `train` needs, restored from
        the newest checkpoint when there is one to resume."""
        from accelerate.utils import set_seed

        set_seed(self.spec.train.seed)
        latest = self._checkpoint_to_resume(resume)
        task = models.resolve_task(self.spec)
        self.data = data.load_data(self.spec, task)
        model = self._setup_model(task)
        optimizer = self._setup_optimizer(model)
        self.sampler, self.loader_generator, loaders = build_loaders(
            self.spec, self.data, self.accelerator.num_processes
        )
        self._prepare(model, optimizer, loaders)
        ever = set().union(*(self.plan.trainable(e) for e in range(self.num_epochs)))
        self.weights = RunWeights(self.unwrapped, ever)  # what weight files hold (weights.py)
        # The frozen prefix runs in eval mode; its outputs are cached when that pays.
        self.features = FrozenFeatures(
            spec=self.spec,
            accelerator=self.accelerator,
            model=self.model,
            plan=self.plan,
            kind=self.bundle.kind,
            data=self.data,
            sampler=self.sampler,
            num_epochs=self.num_epochs,
            cache_dir=self.out_dir / "feature_cache",
            emit=self.emit,
            shared=shared_feature_cache(),  # the worker's, across jobs
        )
        if latest is not None:
            self._restore(latest)

    def _checkpoint_to_resume(self, resume: bool) -> Path | None:
        """The newest checkpoint of this job, or None for a fresh start (which clears what an
        older run left). The main process decides for all (rank_sync.py): another machine's
        folder may hold nothing, or an older attempt's checkpoints."""
        latest, foreign = None, ""
        if self.accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            latest = checkpoint.latest(self.ckpt_root) if resume else None
            if latest is not None:
                foreign = lineage.mismatch(checkpoint.read_manifest(latest), self.identity)
            else:  # a fresh start must not mix with an older run's checkpoints or best weights
                shutil.rmtree(self.ckpt_root, ignore_errors=True)
                shutil.rmtree(self.out_dir / "best", ignore_errors=True)
        latest, foreign = rank_sync.from_main(self.accelerator, (latest, foreign))
        if foreign:
            raise InvalidJobInput(
                f"will not resume from the checkpoints in {self.ckpt_root}: {foreign}; "
                "give the job an output folder of its own"
            )
        return latest

    def _setup_model(self, task) -> nn.Module:
        """The model with its new head, sized for the data's labels, and its freeze plan."""
        spec = self.spec
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
        return model

    def _setup_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        spec = self.spec
        # Static plans freeze before DDP wraps the model (it then ignores frozen parameters);
        # dynamic ones register everything and freeze after.
        model.requires_grad_(True)
        if not self.plan.dynamic:
            self.plan.apply(model, 0)
        groups = build_param_groups(model, self.plan, spec.finetune, spec.optimizer)
        for line in unused_lr_groups(groups, spec.finetune):
            self.emit(log_event(line, level="warning"))
        return build_optimizer(groups, spec.optimizer)

    def _prepare(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loaders: list[DataLoader]
    ) -> None:
        """Hand model, optimizer and loaders to Accelerate; size the run and its schedule."""
        spec, acc = self.spec, self.accelerator
        accum = max(spec.train.grad_accum_steps, 1)
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
        self.schedule = build_schedule(
            spec.schedule, base_lr=spec.optimizer.lr, total_steps=self.total_steps
        )
        # Not passed to accelerator.prepare: its wrapper steps the schedule once per process
        # per optimizer step, while ours counts optimizer steps.
        self.scheduler = self.schedule.lambda_lr(
            self.optimizer.optimizer,
            probe_lr_factors(
                self.optimizer.param_groups, self.plan, spec.finetune, self.steps_per_epoch
            ),
        )

        for level, line in run_lines(spec, acc, self.total_steps):
            self.emit(log_event(line, level=level))

    def _restore(self, path: Path) -> None:
        """The main process reads the checkpoint and sends every rank its part."""
        acc = self.accelerator
        saved, ckpt = checkpoint.read_for_every_rank(acc, path, self.unwrapped, self.weights)
        rank_sync.weights_from_main(acc, self.unwrapped)
        if saved["optimizer"] is not None:  # None: a finished run, which only exports again
            self.optimizer.load_state_dict(saved["optimizer"])
        if saved["scheduler"] is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        self.state = s = TrainerState(**saved["trainer"])
        batch = self.spec.train.batch_size
        s.batch_in_epoch = position_in_batches(s.batch_in_epoch, s.micro_batch_size, batch)
        s.micro_batch_size = batch
        self.last_saved_step = self.state.global_step
        if self.accelerator.is_main_process:
            ckpt.restore_best(self.best_file)
        # RNG last: everything above may draw random numbers (e.g. the new head's init).
        # A rank the checkpoint has none for (more processes now) takes rank 0's.
        rng = saved["rng"][acc.process_index] or saved["rng"][0]
        if rng is not None:
            checkpoint.restore_rng(rng)
        self.emit(
            log_event(
                f"resumed from {path.name}: step {s.global_step}, epoch {s.epoch + 1}, "
                f"batch {s.batch_in_epoch} of the epoch"
            )
        )

    # ------------------------------------------------------------------ train

    def train(self) -> None:
        spec, acc, s = self.spec, self.accelerator, self.state
        log_every = max(spec.train.log_every_steps, 1)
        eval_every = spec.eval.every_steps
        ckpt_every = spec.train.checkpoint_every_steps
        max_norm = spec.train.max_grad_norm
        n_batches = len(self.train_loader)
        share = StepShare(
            examples=len(self.data.train), batch=spec.train.batch_size,
            processes=acc.num_processes, rank=acc.process_index,
            accum=spec.train.grad_accum_steps,
        )  # fmt: skip
        self.window = TrainWindow(acc.device, self.divergence.patience)
        self._last_checkpoint_time = time.monotonic()  # setup's time is not training time
        self._step_lrs = group_lrs(self.optimizer)
        self._step_index = self.scheduler.last_epoch  # the schedule's, for the lrs above
        trainable_before: set[str] | None = None
        progress = self._tracker("training", self.total_steps)

        while not s.finished and s.epoch < self.num_epochs:
            epoch = s.epoch
            with self.window.paused():  # building the feature cache is not step time
                epoch_loader = self.features.train_loader(epoch) or self.train_loader
            loader = epoch_loader
            if s.batch_in_epoch > 0:
                loader = acc.skip_first_batches(epoch_loader, s.batch_in_epoch)
            self.sampler.set_epoch(epoch)
            if hasattr(self.data.train, "seed_epoch"):  # augmented images (data/images.py)
                self.data.train.seed_epoch(spec.train.seed, epoch)
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
                    self.injected_oom.check(batch)
                    logits = self._forward(batch).float()
                    own, factor = share.of(s.batch_in_epoch)
                    loss, to_backward = share_loss(logits, batch["labels"], own, factor)
                    acc.backward(to_backward)
                    if acc.sync_gradients and max_norm > 0:
                        acc.clip_grad_norm_(self.model.parameters(), max_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                s.batch_in_epoch += 1
                if own:
                    self.window.add(loss, logits[:own], batch["labels"][:own])
                if not acc.sync_gradients:
                    continue
                self._step_lrs = group_lrs(self.optimizer)  # the lrs this step used
                self._step_index = self.scheduler.last_epoch
                if not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                s.global_step += 1
                progress.update(s.global_step)  # time-throttled, reads no device value
                # Checked, agreed by every process, when the window is logged.
                self.window.step_loss(loss)

                # Step 1 too: the plot's lr curve starts where the schedule does (warmup).
                if s.global_step % log_every == 0 or s.global_step == 1:
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
        if self.window.batches:
            self._log_train()
        if s.last_eval_step != s.global_step:
            self._evaluate_and_track()
        if self.last_saved_step != s.global_step:
            self.save_checkpoint()
        progress.finish()
        self.features.release()

    def _step_flags(self) -> tuple[bool, bool]:
        """(a checkpoint is due by train.checkpoint_every_minutes, SIGTERM arrived), agreed
        by every process in one reduce per step, so all of them checkpoint or stop at the
        same step: the main process's clock decides the first, any process's signal the
        second."""
        minutes = self.spec.train.checkpoint_every_minutes
        due = minutes > 0 and time.monotonic() - self._last_checkpoint_time >= minutes * 60
        return self.sigterm.agreed_with(self.accelerator, due_on_main=due)

    def _stop_on_sigterm(self) -> None:
        s = self.state
        if self.window.batches:
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

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits of one micro-batch: a batch of the feature cache (``features``, the
        frozen prefix's outputs, feature_cache.py) runs only the rest of the model; an input
        batch runs all of it."""
        if "features" in batch:
            return self.features.cached_logits(self.model, batch)
        return forward.logits(self.model, batch, self.bundle.kind)

    # ------------------------------------------------------------------ metrics

    def _log_train(self) -> None:
        """Emit the mean loss and training accuracy since the last log over all processes, the
        lrs and throughput."""
        s = self.state
        w = self.window.reduce(self.accelerator)
        if w.diverged:
            self.divergence.fail(s.global_step, "loss", w.loss)
        s.train_samples += w.samples
        s.train_time_s += w.elapsed_s
        lrs = self._step_lrs
        self._emit_metrics(
            "train",
            loss=w.loss,
            # The job's lr as scheduled (optimizer.lr x the schedule), whatever the new
            # layer's group is scaled by (head_lr_scale, lp_ft's probe_lr); each group's below.
            lr=self.spec.optimizer.lr * self.schedule.multiplier(self._step_index + 1),
            lr_groups=lrs,
            # The one throughput (README, "Throughput"): since training began, as the summary.
            samples_per_s=s.train_samples / s.train_time_s if s.train_time_s > 0 else 0.0,
            values={"accuracy": w.correct / w.samples} if w.samples else None,
        )
        self.window.reset()

    def _emit_metrics(self, phase: str, **figures) -> None:
        step = self.state.global_step
        self.emit(
            metrics_event(
                phase,
                step=step,
                epoch=step / self.steps_per_epoch,
                total_steps=self.total_steps,
                **figures,
            )
        )

    def _tracker(self, stage: str, total: float) -> ProgressTracker:
        """Progress events of `stage` (progress.py), tagged with where training stands."""
        return ProgressTracker(
            self.emit,
            stage,
            total,
            epoch=lambda: self.state.global_step / self.steps_per_epoch,
            step=None if stage == "training" else (lambda: self.state.global_step),
        )

    def _metric_name(self) -> str:
        return self.spec.eval.metric or "accuracy"

    def evaluate(self) -> dict[str, float] | None:
        """loss, accuracy and macro_f1 on the validation set, over all processes."""
        if self.eval_loader is None:
            return None
        self.model.eval()
        metrics = evaluate_prepared(
            self.accelerator,
            self.features.eval_loader() or self.eval_loader,
            self._forward,
            self.bundle.num_labels,
            progress=self._tracker("evaluating", len(self.data.eval)),
        )
        self._train_mode(self.state.epoch)
        return metrics

    def _evaluate_and_track(self) -> None:
        s = self.state
        if self.window.batches and s.global_step >= self.total_steps:
            self._log_train()  # the final steps' loss, before the final evaluation
        with self.window.paused():
            metrics = self.evaluate()
        s.last_eval_step = s.global_step
        if metrics is None:
            return
        self._emit_metrics("eval", values=metrics)
        self.divergence.observe_eval(s.global_step, metrics)
        name = self._metric_name()
        if not selection.track(s, name, s.global_step, metrics):
            return
        if self.accelerator.is_main_process:
            checkpoint.save_weights_atomic(self.unwrapped, self.best_file, self.weights)
            note = selection.tie_note(s, name)
            self.emit(
                log_event(
                    f"new best {name} {s.best_value:.4f} at step {s.global_step}"
                    + (f" ({note})" if note else "")
                    + "; weights saved"
                )
            )

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        """A resumable checkpoint of the current step (see checkpoint.py for the layout)."""
        with self.window.paused():
            self._write_checkpoint()
        self.last_saved_step = self.state.global_step
        self._last_checkpoint_time = time.monotonic()

    def _write_checkpoint(self) -> None:
        acc, s = self.accelerator, self.state
        rng_states = rank_sync.gather(acc, checkpoint.capture_rng())  # main writes them all
        if acc.is_main_process:
            tmp = checkpoint.begin(self.ckpt_root, s.global_step)
            for rank, rng in enumerate(rng_states):
                checkpoint.write_rng(tmp, rank, rng)
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
                best_weights=self.best_file if s.best_step >= 0 else None,
                weights=self.weights,
            )
            self.emit(log_event(f"checkpoint saved: {path.name}", level="debug"))
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ finish

    def finish(self) -> EngineResult:
        """Export the final model (best, else last), compress if asked, write result.json."""
        acc, s = self.accelerator, self.state
        # Training is over: drop Accelerate's autocast wrapper from forward, so export and
        # compression run the plain module (int8 layers take fp32; recovery trains in fp32).
        self.unwrapped = acc.unwrap_model(self.model, keep_fp32_wrapper=False)
        artifacts: dict[str, str] = {}
        summary: dict[str, float] = {"steps": float(s.global_step)}
        if s.train_time_s > 0:
            summary["train_samples_per_s"] = s.train_samples / s.train_time_s
        for key, value in s.best_metrics.items():
            summary[f"eval_{key}"] = value
        if s.best_step >= 0:
            summary["best_step"] = float(s.best_step)

        if acc.is_main_process:
            selected = selection.load_selected(
                self.unwrapped, s, self._metric_name(), self.best_file,
                validated=self.eval_loader is not None, load=self.weights.load,
            )  # fmt: skip
            self.emit(
                log_event(f"exporting the model of step {selected['step']}: {selected['reason']}")
            )
            summary["selected_step"] = float(selected["step"])
            for key, value in (self._evaluate_test() or {}).items():
                summary[f"test_{key}"] = value
            exported, figures = export_final(
                self.unwrapped, spec=self.spec, bundle=self.bundle, data=self.data,
                out_dir=self.out_dir, emit=self.emit, device=acc.device,
                last_epoch=max(self.num_epochs - 1, 0),
                last_step=self.state.global_step,
            )  # fmt: skip
            artifacts.update(exported)
            summary.update(figures)
            # The summary is numbers only (it travels as map<string, double>); the reason
            # for the exported step rides alongside it in result.json and in a log event.
            write_json_atomic(
                self.out_dir / "result.json",
                {"artifacts": artifacts, "summary": summary, "selection": selected},
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
        metrics = evaluate_dataset(
            self.accelerator, self.unwrapped, test, self.data, self.bundle,
            batch_size=self.spec.eval.batch_size or self.spec.train.batch_size,
            progress=self._tracker("evaluating", len(test)),
        )  # fmt: skip
        self._emit_metrics("test", values=metrics)
        return metrics
