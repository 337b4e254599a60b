"""torchvision architectures: a new head, a FreezePlan whose block count matches what the
validator believes (tunefleet.spec.model_blocks), a forward pass, and LoRA where it applies.

Random init (weights=None) and single tiny images; the big models are built, never trained.
"""

from __future__ import annotations

import pytest
import torch

from tunefleet.spec.choices import TORCHVISION_ARCHS
from tunefleet.spec.model_blocks import body_block_count
from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine import architectures, heads, lora
from tunefleet.worker.engine.blocks import model_blocks
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.freeze import FreezePlan

HEAD = heads.head_dict(spec_pb2.HeadSpec(init="normal", init_std=0.01, dropout=0.1))
# arch -> (image size for the forward pass, where the new head goes)
ARCHS = {
    "resnet18": (32, "fc"),
    "mobilenet_v3_small": (32, "classifier.3"),
    "efficientnet_b0": (32, "classifier.1"),
    "alexnet": (64, "classifier.6"),
    "vgg11": (32, "classifier.6"),
    "vit_b_16": (224, "heads.head"),  # a fixed 14x14 grid of 16 px patches
}


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_validator_block_table_matches_the_freeze_plan(arch):
    with torch.device("meta"):  # structure only: no memory, no init cost
        model = architectures.build_torchvision_arch(arch)
    head_path, _ = heads.find_torchvision_head(model)
    assert len(model_blocks(model, "torchvision", head_path)) - 1 == body_block_count(
        "torchvision", arch
    )


@pytest.fixture(scope="module")
def built():
    cache: dict[str, tuple[torch.nn.Module, str]] = {}

    def get(arch: str) -> tuple[torch.nn.Module, str]:
        if arch not in cache:
            torch.manual_seed(0)
            model = architectures.build_torchvision_arch(arch)
            cache[arch] = heads.replace_torchvision_head(model, 3, HEAD)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", list(ARCHS))
def test_new_head_last_k_and_a_forward_pass(built, arch):
    size, want_head = ARCHS[arch]
    model, head_path = built(arch)
    assert head_path == want_head
    head = model.get_submodule(head_path)
    own_dropout = heads._dropout_before(model, head_path)  # efficientnet, mobilenet: kept
    if own_dropout is not None:
        assert isinstance(head, torch.nn.Linear) and own_dropout.p == 0.1
        linear = head
    else:
        assert isinstance(head, torch.nn.Sequential)  # Dropout(0.1) -> Linear
        linear = head[-1]
    assert linear.out_features == 3 and torch.all(linear.bias == 0)
    assert 0.005 < linear.weight.std().item() < 0.015  # N(0, 0.01)

    n_body = body_block_count("torchvision", arch)
    plan = FreezePlan.for_model(
        model, "torchvision", spec_pb2.FinetuneSpec(strategy="last_k", k=1), head_path
    )
    assert len(plan.body) == n_body
    top, head_block = plan.blocks[-2], plan.blocks[-1]
    assert plan.trainable(0) == set(top.params) | set(head_block.params)
    assert set(head_block.params) == {f"{head_path}.{n}" for n, _ in head.named_parameters()}
    with pytest.raises(InvalidJobInput, match=rf"finetune\.k: {n_body + 1} .* {n_body} blocks"):
        FreezePlan.for_model(
            model,
            "torchvision",
            spec_pb2.FinetuneSpec(strategy="last_k", k=n_body + 1),
            head_path,
        )

    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 3)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "vit_b_16"])
def test_lora_adapts_convs_and_linears_that_get_gradients(arch):
    """Default targets: every Linear/Conv layer of the body PEFT can merge; depthwise convs
    (mobilenet) and the MultiheadAttention projections (vit) are left out."""
    size, _ = ARCHS[arch]
    torch.manual_seed(0)
    with torch.device("meta"):
        probe = architectures.build_torchvision_arch(arch)
    probe, head_path = heads.replace_torchvision_head(probe, 3, HEAD)
    targets = lora.lora_candidates(probe, "torchvision", head_path)
    # Nothing inside the new output layer (a hidden classifier layer is body: it may adapt).
    assert targets and not any(t == head_path or t.startswith(head_path + ".") for t in targets)
    if arch == "mobilenet_v3_small":
        assert all(probe.get_submodule(t).groups == 1 for t in targets if "features" in t)
    if arch == "vit_b_16":
        assert not any("self_attention" in t for t in targets)

    model, head_path = heads.replace_torchvision_head(
        architectures.build_torchvision_arch(arch), 3, HEAD
    )
    assert lora.apply_lora(model, "torchvision", head_path, spec_pb2.LoraSpec(r=4)) == targets
    plan = FreezePlan.for_model(
        model, "torchvision", spec_pb2.FinetuneSpec(strategy="lora"), head_path
    )
    model.train()
    plan.apply(model, 0)
    model(torch.randn(2, 3, size, size)).sum().backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == plan.trainable(0)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:5]

    merged = lora.merge_lora(model)
    assert not any(lora.is_lora_param(n) for n, _ in merged.named_parameters())


def test_a_vit_built_for_another_image_size_exports_and_loads_back(tmp_path):
    """Some weights build a ViT for another image size (vit_b_16 IMAGENET1K_SWAG_E2E_V1:
    384, vit_l_16's: 512), which sizes its position embeddings; load_model rebuilt every
    ViT at the default 224 and could not load such a model. Built here without weights,
    as torchvision's builder does for them."""
    import torchvision

    from tunefleet.worker.engine.export import export_model, load_model

    torch.manual_seed(0)
    model = torchvision.models.get_model("vit_b_32", image_size=64)
    model, _ = heads.replace_torchvision_head(model, 3, HEAD)
    task = {"kind": "image", "image_size": 64, "in_channels": 3}
    folder = export_model(
        model.eval(), tmp_path / "model", kind="torchvision", arch="vit_b_32",
        labels=["a", "b", "c"], head=HEAD, task=task,
    )  # fmt: skip
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_model(folder)(images), model(images))


def test_a_random_vit_is_built_for_the_jobs_image_size():
    """`init: random` with data.image_size 64: built at 64 (at torchvision's 224 the first
    step failed "Wrong image height"); a size its patches do not divide is refused."""
    from tunefleet.worker.engine.models import build_model, resolve_task

    spec = spec_pb2.JobSpec()
    spec.model.source, spec.model.name, spec.model.init = "torchvision", "vit_b_32", "random"
    spec.data.source, spec.data.image_size = "imagefolder", 64
    bundle = build_model(spec, resolve_task(spec), 3, ["a", "b", "c"])
    with torch.no_grad():
        assert bundle.model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    spec.data.image_size = 60
    with pytest.raises(InvalidJobInput, match="data.image_size: vit_b_32 cuts images into 32x32"):
        build_model(spec, resolve_task(spec), 3, ["a", "b", "c"])
