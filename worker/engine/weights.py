"""Which tensors a run's weight files hold: `RunWeights`.

A run writes its weights several times before the exported model folder: every checkpoint,
and the best evaluated weights each time they improve. When the freeze plan keeps part of
the model frozen for the whole run (head_only, last_k, patterns, lora; gradual and lp_ft
until their last frozen block), that part is the pretrained model, unchanged, and the run
rebuilds it from the model source whenever it starts or resumes. So those files hold only
what the run can change: every parameter the plan trains in some epoch, and every buffer
(small; a BatchNorm's running statistics move whenever its block trains). A head_only
checkpoint of a 90 MB MiniLM is then some kilobytes, and a sweep's trials, the checkpoint
uploads of a worker without shared storage (worker/checkpoint_sync.py) and resumes after
a preemption stop writing and moving the unchanged backbone.

A partial file records, in its safetensors metadata, a fingerprint of the frozen part it
left out. Loading checks it against the model it loads into: if the source changed since
the file was written (a local folder replaced, a hub revision moved), loading it would
combine a new backbone with weights trained on the old one, so the file is refused as
InvalidJobInput instead. The fingerprint samples each frozen tensor (at most 4,096 values,
evenly spaced, plus its name, dtype and shape): another checkpoint of the same architecture
changes nearly every value, and hashing a sample costs a millisecond where hashing a
7B model's bytes would take seconds.

The exported model folder is always whole (export.py); a plan with nothing frozen writes
whole files here too, as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from tunefleet.worker.engine.errors import InvalidJobInput

PARTIAL_KEY = "tunefleet_partial"
FINGERPRINT_KEY = "tunefleet_frozen_fingerprint"
_SAMPLE = 4096


def frozen_fingerprint(model: nn.Module, frozen: set[str]) -> str:
    """A fingerprint of the parameters named in `frozen` (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        if name not in frozen:
            continue
        t = p.detach().reshape(-1)
        step = max(t.numel() // _SAMPLE, 1)
        sample = t[::step][:_SAMPLE].to("cpu", torch.float32).contiguous()
        h.update(f"{name}|{p.dtype}|{tuple(p.shape)}|".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


class RunWeights:
    """Saves and loads the weights of one run's model, whole or without its frozen part.

    `trainable`: the names of the parameters the plan trains in any epoch of the run; None
    (a caller without a plan): every one, so the files are whole."""

    def __init__(self, model: nn.Module, trainable: set[str] | None = None):
        names = {name for name, _ in model.named_parameters()}
        self.frozen = set() if trainable is None else names - set(trainable)
        self.partial = bool(self.frozen) and self.frozen != names
        self._fingerprint: str | None = None

    def fingerprint(self, model: nn.Module) -> str:
        if self._fingerprint is None:  # the frozen part never changes during the run
            self._fingerprint = frozen_fingerprint(model, self.frozen)
        return self._fingerprint

    def save(self, model: nn.Module, path: Path | str) -> None:
        """Writes `path` (the caller makes it atomic: a temporary name, then a rename)."""
        from safetensors.torch import save_file, save_model

        if not self.partial:
            save_model(model, str(path))
            return
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for name, t in model.state_dict().items():
            if name in self.frozen:
                continue
            t = t.detach().contiguous()
            if t.data_ptr() in seen:  # a tied tensor: safetensors stores each storage once
                t = t.clone()
            seen.add(t.data_ptr())
            tensors[name] = t.to("cpu")
        metadata = {"format": "pt", PARTIAL_KEY: "1", FINGERPRINT_KEY: self.fingerprint(model)}
        save_file(tensors, str(path), metadata=metadata)

    def load(self, model: nn.Module, path: Path | str) -> None:
        """Loads `path` into `model`: a whole file as it is, a partial one onto the frozen
        part already in `model`. A file that does not fit (another architecture, other
        labels, or a frozen part that changed) is InvalidJobInput naming the file."""
        from safetensors import safe_open
        from safetensors.torch import load_file, load_model

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get(PARTIAL_KEY) != "1":
            load_model(model, str(path))  # a whole file (or one written before partial ones)
            return
        if metadata.get(FINGERPRINT_KEY) != self.fingerprint(model):
            raise InvalidJobInput(
                f"{path}: holds the trained part only, and the frozen part it was trained "
                "with differs from this job's model (was the model source replaced?)"
            )
        try:
            missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
        except RuntimeError as exc:  # a tensor of another shape
            raise InvalidJobInput(
                f"{path}: its tensors do not fit this job's model "
                f"({str(exc).strip().splitlines()[-1].strip()[:200]}); "
                "give the job a fresh output folder"
            ) from None
        left_out = [name for name in missing if name not in self.frozen]
        if unexpected or left_out:
            detail = ", ".join((unexpected or left_out)[:3])
            raise InvalidJobInput(
                f"{path}: its tensors do not fit this job's model ({detail}); "
                "give the job a fresh output folder"
            )
