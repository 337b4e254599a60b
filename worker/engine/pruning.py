"""Magnitude pruning of a trained model (compression.py's prune stage).

- unstructured: L1, global or per layer, over the weights of Linear and Conv layers
  (embeddings, norms and biases are left alone); zeros in dense weights, same shapes.
  Global ranks each weight's magnitude relative to its layer's mean magnitude: raw
  magnitudes compare unlike layers, and a layer whose weights are small as a whole is
  emptied. all-MiniLM-L6-v2's pooler (weights ~10x smaller than the encoder's: sentence-
  transformers never trained it) lost 95 % of its weights to a raw 30 % global cut; the
  demo's fine-tuned model then gave logits 3.3x smaller, eval loss 0.080 -> 0.661 with
  accuracy 0.9925 -> 0.9800 (right, but unsure). Ranked relative to each layer's mean, the
  pooler loses 28 % like the other layers, and eval loss is 0.094 (accuracy 0.9825).
- structured, BERT-style encoders (encoder_pruning.py): the lowest-norm attention heads and
  FFN neurons of every layer are sliced out, so the model is smaller and faster.
- structured, other models (CNNs): whole output channels / neurons with the smallest L2 norm
  are zeroed per layer; same shapes.

Masks stay attached as torch.nn.utils.prune hooks until `make_permanent`, so that recovery
training (recovery.py) keeps pruned weights at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from tunefleet.worker.engine import encoder_pruning
from tunefleet.worker.engine.errors import InvalidJobInput


def prunable_weights(model: nn.Module, keep: tuple[str, ...] = ()) -> list[tuple[nn.Module, str]]:
    """(module, "weight") of every Linear / Conv layer, each parameter once.

    Embeddings and norms are skipped, and so is a Linear whose weight is tied to an
    embedding (an LM head): zeroing it would prune the embedding too. Modules under a
    path in `keep` are skipped too: the new classification head is initialised N(0, 0.01),
    so a global magnitude ranking would prune it first and flatten every logit.
    """
    conv1d = _hf_conv1d()
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) + ((conv1d,) if conv1d else ())
    embedded = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    }
    seen: set[int] = set()
    out = []
    for path, m in model.named_modules():
        if any(path == k or path.startswith(k + ".") for k in keep):
            continue
        w = getattr(m, "weight", None)
        if isinstance(m, kinds) and isinstance(w, nn.Parameter):
            if id(w) in embedded or id(w) in seen:
                continue
            seen.add(id(w))
            out.append((m, "weight"))
    return out


def _hf_conv1d():
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:
        return None
    return Conv1D


@dataclass(frozen=True)
class PruneStats:
    sparsity: float  # share of the prunable weights zeroed or removed
    prunable: int  # prunable weights before pruning
    description: str  # what was done, for the report's notes
    removed: bool = False  # weights sliced out (structured encoder), not masked to zero


def prune_model(
    model: nn.Module, spec, keep: tuple[str, ...] = (), *, permanent: bool = True
) -> PruneStats:
    """Prune `model` in place per a PruneSpec (module doc).

    permanent=False leaves torch.nn.utils.prune's masks attached (recovery training keeps
    pruned weights at zero through them); `make_permanent` removes them afterwards.
    Structured pruning of a BERT-style encoder changes shapes and attaches nothing.
    """
    amount = float(spec.amount)
    if not 0.0 < amount < 1.0:
        raise InvalidJobInput(f"compression.prune.amount: {amount} must be in (0, 1)")
    method, scope = spec.method or "unstructured", spec.scope or "global"
    if method == "structured" and encoder_pruning.encoder_layers(model):
        try:
            done = encoder_pruning.prune_encoder(model, amount)
        except ValueError as e:
            raise InvalidJobInput(f"compression.prune: {e}") from e
        n_layers = len(encoder_pruning.encoder_layers(model))
        removed = 1.0 - done.weights_after / done.weights_before
        return PruneStats(
            removed,
            done.weights_before,
            f"structured: removed {done.heads_removed} of {done.heads} attention heads and "
            f"{done.neurons_removed:,} of {done.neurons:,} FFN neurons in each of {n_layers} "
            f"layers (smallest L2 norm per layer), {removed:.2%} of the encoder layers' "
            "Linear weights; embeddings, pooler and head kept; saved smaller "
            "(config.json pruned_heads, intermediate_size)",
            removed=True,
        )
    targets = prunable_weights(model, keep)
    if not targets:
        raise InvalidJobInput("compression.prune: the model has no Linear or Conv layer to prune")
    conv1d = _hf_conv1d()
    if method == "structured":
        # Whole output neurons / channels, ranked by L2 norm, per layer: a global ranking of
        # rows of different widths would compare unlike things.
        for m, name in targets:
            dim = 1 if conv1d and isinstance(m, conv1d) else 0  # HF Conv1D is (in, out)
            prune.ln_structured(m, name, amount=amount, n=2, dim=dim)
    elif method == "unstructured" and scope == "global":
        prune.global_unstructured(
            targets,
            pruning_method=prune.L1Unstructured,
            amount=amount,
            importance_scores={(m, n): _relative_magnitude(getattr(m, n)) for m, n in targets},
        )
    elif method == "unstructured" and scope == "layer":
        for m, name in targets:
            prune.l1_unstructured(m, name, amount=amount)
    else:
        raise InvalidJobInput(
            f"compression.prune: unknown method/scope {method!r}/{scope!r} "
            "(method: unstructured | structured; scope: global | layer)"
        )
    if permanent:
        make_permanent(model)
    total = sum(getattr(m, n).numel() for m, n in targets)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in targets)
    how = (
        "structured (whole output channels / neurons zeroed, smallest L2 norm), per layer"
        if method == "structured"
        else "unstructured, global (by magnitude relative to the layer's mean)"
        if scope == "global"
        else f"unstructured, {scope}"
    )
    return PruneStats(
        zeros / total,
        total,
        f"{amount:.0%} of Linear/Conv weights, {how}; sparsity reached {zeros / total:.2%} "
        f"of {total:,} prunable weights (embeddings, norms and biases kept"
        + (f"; {', '.join(keep)} not pruned" if keep else "")
        + "); saved dense, so no smaller or faster than fp32"
        + ("; only BERT-style encoders are made narrower" if method == "structured" else ""),
    )


def _relative_magnitude(weight: torch.Tensor) -> torch.Tensor:
    """|w| / mean |w| of its layer: the global ranking's score (module docstring)."""
    magnitude = weight.detach().abs()
    return magnitude / magnitude.mean().clamp(min=torch.finfo(magnitude.dtype).tiny)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every torch.nn.utils.prune mask into its weight and drop the mask and hook."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
    return model
