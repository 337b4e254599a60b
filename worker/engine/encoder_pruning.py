"""Structured pruning that makes BERT-style encoders smaller: attention heads and FFN neurons go.

Zeroing whole rows (torch.nn.utils.prune.ln_structured) leaves matrices of the same shape, so
dense kernels do the same work and nothing gets faster. Here the rows and columns are sliced
out of the Linear layers instead, and the model is physically smaller and faster on a CPU.

Layout: ``model.base_model.encoder.layer[i]`` with ``attention.self.{query,key,value}``,
``attention.output.dense``, ``intermediate.dense`` and ``output.dense`` (BERT, RoBERTa,
ELECTRA, XLM-R, MiniLM, ...). Other architectures report `encoder_layers(model) == []`.

Importance is magnitude, like the unstructured pruning (no data, no gradients): the L2 norm
of all the weights that belong to a head (its rows of query/key/value and its columns of
attention.output.dense) or to an FFN neuron (its row of intermediate.dense and its column of
output.dense). Per layer, the `amount` fraction of heads (one head always stays) and of
neurons with the smallest norms is removed. Every layer loses the same number of neurons,
each layer picking its own, so the standard ``config.intermediate_size`` still describes it.

Saving and loading: the removed heads go in ``config.pruned_heads`` (``{layer: [original head
indices]}``), the key transformers 4 re-applied in from_pretrained. Transformers 5 removed
head pruning, and its from_pretrained cannot load attention layers narrower than
``hidden_size``: build the model from the config, call `restore_pruned_heads`, then load the
weights (export.load_model and int8.load_int8 do this).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["EncoderPruning", "encoder_layers", "prune_encoder", "restore_pruned_heads"]


@dataclass(frozen=True)
class EncoderPruning:
    heads_removed: int  # per layer
    heads: int  # per layer, before
    neurons_removed: int  # per layer
    neurons: int  # per layer, before
    weights_before: int  # elements of the encoder layers' Linear weights
    weights_after: int


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's encoder layers if all of them have the BERT layout, else []."""
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    layers = list(getattr(encoder, "layer", None) or [])
    return layers if layers and all(_bert_layout(layer) for layer in layers) else []


def _bert_layout(layer: nn.Module) -> bool:
    try:
        attn, out = layer.attention.self, layer.attention.output.dense
        linears = (attn.query, attn.key, attn.value, out, layer.intermediate.dense)
        linears += (layer.output.dense,)
        return all(isinstance(m, nn.Linear) for m in linears) and attn.attention_head_size > 0
    except AttributeError:
        return False


def head_importance(layer: nn.Module) -> torch.Tensor:
    """L2 norm of each remaining head's weights, in the layer's current head order."""
    attn = layer.attention.self
    n, d = attn.num_attention_heads, attn.attention_head_size
    sq = sum(m.weight.detach().float().view(n, d, -1).pow(2).sum((1, 2)) for m in _qkv(attn))
    out = layer.attention.output.dense.weight.detach().float()
    sq = sq + out.view(out.shape[0], n, d).pow(2).sum((0, 2))
    return sq.sqrt()


def neuron_importance(layer: nn.Module) -> torch.Tensor:
    """L2 norm of each FFN neuron's weights (its row in and its column out)."""
    w_in = layer.intermediate.dense.weight.detach().float()
    w_out = layer.output.dense.weight.detach().float()
    return (w_in.pow(2).sum(1) + w_out.pow(2).sum(0)).sqrt()


def prune_encoder(model: nn.Module, amount: float) -> EncoderPruning:
    """Remove `amount` of the heads and FFN neurons of every layer, in place (module doc)."""
    layers = encoder_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BERT-style encoder layers")
    before = _linear_weights(layers)
    heads = layers[0].attention.self.num_attention_heads
    neurons = layers[0].intermediate.dense.out_features
    drop_heads = min(round(amount * heads), heads - 1)
    drop_neurons = min(round(amount * neurons), neurons - 1)
    for layer in layers:
        if layer.attention.self.num_attention_heads != heads:
            raise ValueError("prune_encoder: layers have different head counts already")
        order = torch.sort(head_importance(layer), stable=True).indices
        current = _current_heads(layer)
        _prune_heads(layer, {current[int(i)] for i in order[:drop_heads]})
        order = torch.sort(neuron_importance(layer), stable=True).indices
        _keep_neurons(layer, torch.sort(order[drop_neurons:]).values)
    config = getattr(model, "config", None)
    if config is not None:
        config.pruned_heads = _pruned_heads(layers)
        config.intermediate_size = neurons - drop_neurons
    return EncoderPruning(drop_heads, heads, drop_neurons, neurons, before, _linear_weights(layers))


def restore_pruned_heads(model: nn.Module) -> nn.Module:
    """Remove the heads ``model.config.pruned_heads`` names from a model built from its config.

    Its FFN layers already have the pruned width (config.intermediate_size); heads that are
    gone already are skipped, so calling this twice is harmless. Returns the model.
    """
    pruned = getattr(getattr(model, "config", None), "pruned_heads", None) or {}
    if not pruned:
        return model
    layers = encoder_layers(model)
    if not layers:
        raise ValueError(f"config.pruned_heads is set but {type(model).__name__} is not BERT-style")
    for index, heads in pruned.items():
        _prune_heads(layers[int(index)], {int(h) for h in heads})
    return model


def _qkv(attn: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    return attn.query, attn.key, attn.value


def _current_heads(layer: nn.Module) -> list[int]:
    """Original indices of the heads still in the layer, in order."""
    gone = getattr(layer.attention, "pruned_heads", set())
    total = layer.attention.self.num_attention_heads + len(gone)
    return [h for h in range(total) if h not in gone]


def _prune_heads(layer: nn.Module, heads: set[int]) -> None:
    """Slice the heads `heads` (original indices) out of the layer's attention."""
    current = _current_heads(layer)
    heads = heads & set(current)
    if not heads:
        return
    if len(heads) == len(current):
        raise ValueError("cannot remove every attention head of a layer")
    attn, d = layer.attention.self, layer.attention.self.attention_head_size
    keep = [pos for pos, h in enumerate(current) if h not in heads]
    index = torch.cat([torch.arange(p * d, (p + 1) * d) for p in keep])
    attn.query, attn.key, attn.value = (_slice(m, index, 0) for m in _qkv(attn))
    out = layer.attention.output
    out.dense = _slice(out.dense, index, 1)
    attn.num_attention_heads = len(keep)
    attn.all_head_size = len(keep) * d
    layer.attention.pruned_heads = set(getattr(layer.attention, "pruned_heads", set())) | heads


def _keep_neurons(layer: nn.Module, index: torch.Tensor) -> None:
    layer.intermediate.dense = _slice(layer.intermediate.dense, index, 0)
    layer.output.dense = _slice(layer.output.dense, index, 1)


def _slice(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """transformers' prune_linear_layer, keeping the layer's dtype (it builds a float32 one)."""
    from transformers.pytorch_utils import prune_linear_layer

    return prune_linear_layer(linear, index, dim=dim).to(linear.weight.dtype)


def _pruned_heads(layers: list[nn.Module]) -> dict[int, list[int]]:
    out = {}
    for i, layer in enumerate(layers):
        gone = getattr(layer.attention, "pruned_heads", set())
        if gone:
            out[i] = sorted(gone)
    return out


def _linear_weights(layers: list[nn.Module]) -> int:
    return sum(
        m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, nn.Linear)
    )
