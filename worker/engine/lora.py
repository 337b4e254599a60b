"""LoRA (``finetune.strategy: lora``): PEFT adapters injected into the body (`apply_lora`),
trained with the head while everything else stays frozen (freeze.py), and folded back into the
weights they adapt for export (`merge_lora`).
"""

from __future__ import annotations

import warnings

from torch import nn

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine.blocks import model_blocks
from tunefleet.worker.engine.errors import InvalidJobInput


def is_lora_param(name: str) -> bool:
    """LoRA adapter weights (lora_A / lora_B / lora_embedding_*), as PEFT names them."""
    return any(part.startswith("lora_") for part in name.split("."))


def _lora_eligible(module: nn.Module) -> bool:
    """Layer types PEFT's LoRA can adapt *and merge back* into a plain layer."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.groups == 1  # grouped/depthwise convs: PEFT cannot merge them
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return True
    return type(module).__name__ == "Conv1D"  # transformers' GPT-2 style projection


def lora_candidates(model: nn.Module, kind: str, head_path: str) -> list[str]:
    """Module names LoRA may target: adaptable layers of the body (the head trains fully).

    Linears inside nn.MultiheadAttention are skipped: its forward reads ``out_proj.weight``
    directly, so an adapter there would never see a gradient.
    """
    body = {p for block in model_blocks(model, kind, head_path)[:-1] for p in block.params}
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return [
        name
        for name, module in model.named_modules()
        if name
        and _lora_eligible(module)
        and f"{name}.weight" in body
        and not any(name.startswith(a + ".") for a in attention)
    ]


def apply_lora(model: nn.Module, kind: str, head_path: str, lora: spec_pb2.LoraSpec) -> list[str]:
    """Inject LoRA adapters (PEFT) in place; returns the adapted module names.

    ``target_modules`` entries match a module by its name or name suffix (``query`` matches
    ``bert.encoder.layer.0.attention.self.query``), as in PEFT; empty means every adaptable
    layer below the head. The model keeps its class and parameter names (plus
    ``.base_layer`` / ``.lora_A.default`` segments), so freeze plans, checkpoints and
    Accelerate treat it like any other model; `merge_lora` turns it back into a plain one.
    """
    from peft import LoraConfig, inject_adapter_in_model

    candidates = lora_candidates(model, kind, head_path)
    requested = list(lora.target_modules)
    if requested:
        targets = []
        for want in requested:
            hits = [n for n in candidates if n == want or n.endswith("." + want)]
            if not hits:
                leaves = sorted({_short_name(n) for n in candidates})
                raise InvalidJobInput(
                    f"finetune.lora.target_modules: {want!r} matches no adaptable layer below "
                    f"the head of {type(model).__name__} (Linear, Conv with groups 1, "
                    f"Embedding); layer names there: {_preview(leaves, 12)}"
                )
            targets += [n for n in hits if n not in targets]
    else:
        targets = candidates
    if not targets:
        raise InvalidJobInput(
            f"finetune.strategy: lora found no adaptable layer below the head of "
            f"{type(model).__name__}"
        )
    config = LoraConfig(
        r=lora.r if lora.HasField("r") else 8,
        lora_alpha=lora.alpha if lora.HasField("alpha") else 16.0,
        lora_dropout=lora.dropout if lora.HasField("dropout") else 0.0,
        target_modules=targets,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "fan_in_fan_out set to True" for Conv1D
        inject_adapter_in_model(config, model)
    return targets


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer (W += B A * alpha/r), in place.

    What is left is the plain architecture with plain parameter names, which is what the
    exported model/ folder holds: it loads with from_pretrained / load_model, no PEFT needed.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in adapted:
        module.merge()
        model.set_submodule(name, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def _short_name(module: str) -> str:
    """`bert.encoder.layer.0.attention.self.query` -> `query`; `stem.0` stays `stem.0`."""
    parts = module.split(".")
    keep = next((i for i in range(len(parts) - 1, -1, -1) if not parts[i].isdigit()), 0)
    return ".".join(parts[keep:])


def _preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def describe_lora(model: nn.Module, targets: list[str], lora: spec_pb2.LoraSpec) -> str:
    """One log line: the adapters' settings, where they sit and how many parameters they add."""
    adapters = sum(p.numel() for n, p in model.named_parameters() if is_lora_param(n))
    leaves = sorted({_short_name(t) for t in targets})
    return (
        f"LoRA r {lora.r}, alpha {lora.alpha:g}, dropout {lora.dropout:g} on "
        f"{len(targets)} layers ({_preview(leaves)}): {adapters:,} adapter params"
    )
