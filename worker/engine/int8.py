"""Dynamic int8 quantization (compression.py's quantize stage) and its folder format.

`quantize_dynamic_int8`: `torch.ao.quantization.quantize_dynamic` on a CPU copy: int8 weights
for every nn.Linear, activations quantized on the fly; everything else stays fp32.

The int8 folder format (`model_int8/`), chosen so that loading runs no pickle:
- every file of the fp32 export except the weight files (config.json, tokenizer files,
  tunefleet_model.json, ...), so the float architecture can be rebuilt;
- `model_int8.safetensors`: for each quantized Linear `P`, `P.weight.int8` (int8 values),
  `P.weight.scale` / `P.weight.zero_point` (per-tensor scalars, or per-channel vectors) and
  `P.bias` (fp32); every other tensor of the quantized model's state dict under its own key;
- `tunefleet_int8.json`: `{"format": "tunefleet-dynamic-int8", "version": 1, "modules":
  {P: {"qscheme": ..., "axis": ...}}, ...}`.
`load_int8(folder, build_float_model)` rebuilds the float model (for Hugging Face folders it
can do so from config.json by itself), quantizes it the same way and loads the saved values.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tunefleet.worker.engine import encoder_pruning
from tunefleet.worker.engine.architectures import build_torchvision_arch
from tunefleet.worker.engine.heads import replace_hf_head, replace_torchvision_head

INT8_FORMAT = "tunefleet-dynamic-int8"
INT8_WEIGHTS = "model_int8.safetensors"
INT8_MANIFEST = "tunefleet_int8.json"
_WEIGHT_FILE = re.compile(r"\.(safetensors|bin|pt|pth|ckpt)(\.index\.json)?$")


def quantize_dynamic_available() -> bool:
    """torch.ao.quantization is deprecated (torchao replaces it); without it, no int8 stage."""
    return _quantize_dynamic() is not None


def _quantize_dynamic():
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        return None
    return quantize_dynamic


def _ensure_quantized_engine() -> str:
    engine = torch.backends.quantized.engine
    if engine == "none":
        for candidate in ("x86", "fbgemm", "qnnpack"):
            if candidate in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = candidate
                return candidate
    return engine


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` with every nn.Linear as a dynamically quantized int8 Linear."""
    quantize_dynamic = _quantize_dynamic()
    if quantize_dynamic is None:
        raise RuntimeError("torch.ao.quantization.quantize_dynamic is not available")
    _ensure_quantized_engine()
    # Copy first, then move: the caller's model (and its optimizer) keep their device.
    m = copy.deepcopy(model).to("cpu").eval()
    with warnings.catch_warnings():
        # torch 2.10+ deprecates torch.ao.quantization in favour of torchao (not installed).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)


def quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized import dynamic as nnqd

    return {n: m for n, m in model.named_modules() if isinstance(m, nnqd.Linear)}


def save_int8(qmodel: nn.Module, folder: Path, *, skeleton: Path | None = None) -> None:
    """Write `qmodel` (from quantize_dynamic_int8) in the int8 folder format (module doc)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if skeleton is not None:
        for f in Path(skeleton).iterdir():
            if f.is_file() and not _WEIGHT_FILE.search(f.name):
                shutil.copy2(f, folder / f.name)
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, dict] = {}
    qlinears = quantized_linears(qmodel)
    for name, m in qlinears.items():
        w, b = m._weight_bias()
        info = {"qscheme": str(w.qscheme()).removeprefix("torch.")}
        tensors[f"{name}.weight.int8"] = w.int_repr()
        if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            tensors[f"{name}.weight.scale"] = torch.tensor(w.q_scale(), dtype=torch.float64)
            tensors[f"{name}.weight.zero_point"] = torch.tensor(w.q_zero_point())
        else:
            tensors[f"{name}.weight.scale"] = w.q_per_channel_scales().to(torch.float64)
            tensors[f"{name}.weight.zero_point"] = w.q_per_channel_zero_points()
            info["axis"] = int(w.q_per_channel_axis())
        if b is not None:
            tensors[f"{name}.bias"] = b.detach()
        modules[name] = info
    prefixes = tuple(f"{n}." for n in qlinears)
    for k, v in qmodel.state_dict().items():
        if isinstance(v, torch.Tensor) and not v.is_quantized and not k.startswith(prefixes):
            tensors[k] = v.detach()
    seen: set[int] = set()
    for k, v in tensors.items():  # safetensors refuses shared storage (tied weights)
        v = v.cpu().contiguous()
        if v.data_ptr() in seen and v.numel():
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v
    save_file(tensors, str(folder / INT8_WEIGHTS), metadata={"format": INT8_FORMAT})
    manifest = {
        "format": INT8_FORMAT,
        "version": 1,
        "dtype": "qint8",
        "modules": modules,
        "torch": torch.__version__,
        "quantized_engine": torch.backends.quantized.engine,
    }
    _write_json(folder / INT8_MANIFEST, manifest)


def load_int8(
    folder: str | Path, build_float_model: Callable[[], nn.Module] | None = None
) -> nn.Module:
    """Load a `model_int8/` folder onto the CPU.

    `build_float_model` returns the float architecture (weights don't matter; they are
    replaced). Leave it out for folders the engine exported: the architecture is rebuilt
    from tunefleet_model.json (and config.json for Hugging Face models).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = json.loads((folder / INT8_MANIFEST).read_text())
    if manifest.get("format") != INT8_FORMAT:
        raise ValueError(f"{folder}: not a {INT8_FORMAT} folder")
    float_model = build_float_model() if build_float_model else _float_architecture(folder)
    tensors = load_file(str(folder / INT8_WEIGHTS))
    quantized = manifest["modules"]
    own = {k: v for k, v in tensors.items() if not k.startswith(tuple(f"{n}." for n in quantized))}
    # Float tensors go in before quantizing: quantized Linears only load their own format.
    missing, unexpected = float_model.load_state_dict(own, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in quantized]
    if missing or unexpected:
        raise ValueError(f"{folder}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    qmodel = quantize_dynamic_int8(float_model)
    qlinears = quantized_linears(qmodel)
    if set(qlinears) != set(quantized):
        raise ValueError(
            f"{folder}: the rebuilt model's Linear layers do not match the saved ones "
            f"({sorted(set(qlinears) ^ set(quantized))[:5]})"
        )
    for name, info in quantized.items():
        ints = tensors[f"{name}.weight.int8"]
        scale = tensors[f"{name}.weight.scale"]
        zero = tensors[f"{name}.weight.zero_point"]
        bias = tensors.get(f"{name}.bias")
        if "axis" in info:
            w = torch._make_per_channel_quantized_tensor(ints, scale, zero, info["axis"])
        else:
            w = torch._make_per_tensor_quantized_tensor(ints, float(scale), int(zero))
        qlinears[name].set_weight_bias(w, bias)
    return qmodel.eval()


def _float_architecture(folder: Path) -> nn.Module:
    """The exported model's float architecture with throwaway weights, like export.load_model."""
    meta_path = folder / "tunefleet_model.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"kind": "hf", "head": {}}
    head = meta.get("head") or {}
    if meta["kind"] == "hf":
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder}: no config.json; pass build_float_model")
        from transformers import AutoConfig, AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder))
        encoder_pruning.restore_pruned_heads(model)  # structured pruning: narrower attention
        if "labels" in meta:  # the head as the trainer built it (export.load_model says why)
            model, _ = replace_hf_head(model, meta["num_labels"], meta["labels"], head)
        return model
    in_channels = (meta.get("task") or {}).get("in_channels") or 3
    model = build_torchvision_arch(
        meta["arch"], in_channels=in_channels, options=meta.get("arch_options")
    )
    model, _ = replace_torchvision_head(model, meta["num_labels"], head)
    return model


def int8_param_counts(qmodel: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters), counting the packed int8 weights too (they are not
    nn.Parameters)."""
    params = list(qmodel.parameters())
    total = sum(p.numel() for p in params)
    nonzero = sum(int(torch.count_nonzero(p)) for p in params)
    for m in quantized_linears(qmodel).values():
        w, b = m._weight_bias()
        ints = w.int_repr()
        zero = (
            w.q_zero_point()
            if w.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
            else w.q_per_channel_zero_points().view(-1, *([1] * (ints.ndim - 1)))
        )
        total += ints.numel()
        nonzero += int((ints.to(torch.int64) != zero).sum())
        if b is not None:
            total += b.numel()
            nonzero += int(torch.count_nonzero(b))
    return total, nonzero


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    os.replace(tmp, path)
