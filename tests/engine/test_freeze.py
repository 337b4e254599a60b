"""FreezePlan: blocks per architecture, what each strategy trains, frozen BatchNorm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine import architectures, models
from tunefleet.worker.engine.blocks import model_blocks
from tunefleet.worker.engine.errors import InvalidJobInput
from tunefleet.worker.engine.freeze import FreezePlan
from tunefleet.worker.engine.plan_preview import plan_table


@pytest.fixture
def bert_bundle(bert_dir, text_csvs, text_spec):
    """bert_bundle(**finetune) -> (spec, ModelBundle) of the tiny BERT."""

    def build(**finetune):
        spec = text_spec(
            bert_dir, text_csvs, finetune=finetune or {"strategy": "full"}, train={"epochs": 8}
        )
        return spec, models.build_model(spec, models.resolve_task(spec), 2, ["neg", "pos"])

    return build


def test_bert_blocks_are_embeddings_layers_pooler_head(bert_bundle):
    _, bundle = bert_bundle()
    blocks = model_blocks(bundle.model, "hf")
    assert [b.name for b in blocks] == ["embeddings", "layer.0", "layer.1", "pooler", "head"]
    assert set(blocks[-1].params) == {"classifier.weight", "classifier.bias"}
    assert set(blocks[-2].params) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert sum(b.numel for b in blocks) == sum(p.numel() for p in bundle.model.parameters())


def test_torchvision_blocks():
    resnet = architectures.build_torchvision_arch("resnet18")
    assert [b.name for b in model_blocks(resnet, "torchvision", "fc")] == [
        "stem",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "head",
    ]
    cnn = architectures.SmallCNN()
    assert [b.name for b in model_blocks(cnn, "torchvision", "head")] == [
        "stem",
        "stage1",
        "stage2",
        "head",
    ]
    mobilenet = architectures.build_torchvision_arch("mobilenet_v3_small")
    names = [b.name for b in model_blocks(mobilenet, "torchvision", "classifier.3")]
    assert names[0] == "features.0" and names[-2:] == ["classifier.0", "head"] and len(names) == 15


def test_vit_blocks():
    vit = architectures.build_torchvision_arch("vit_b_16")
    blocks = model_blocks(vit, "torchvision", "heads.head")
    assert [b.name for b in blocks] == ["stem", *[f"layer.{i}" for i in range(12)], "head"]
    assert {"class_token", "conv_proj.weight", "encoder.pos_embedding"} <= set(blocks[0].params)
    assert "encoder.ln.weight" in blocks[-2].params  # the final LayerNorm: the last layer's
    assert set(blocks[-1].params) == {"heads.head.weight", "heads.head.bias"}


@pytest.mark.parametrize(
    ("finetune", "blocks"),
    [
        ({"strategy": "full"}, ["embeddings", "layer.0", "layer.1", "pooler", "head"]),
        ({"strategy": "head_only"}, ["head"]),
        ({"strategy": "last_k", "k": 1}, ["pooler", "head"]),
        ({"strategy": "last_k", "k": 2}, ["layer.1", "pooler", "head"]),
        ({"strategy": "last_k", "k": 4}, ["embeddings", "layer.0", "layer.1", "pooler", "head"]),
    ],
)
def test_block_strategies_train_exactly_their_blocks(bert_bundle, finetune, blocks):
    spec, bundle = bert_bundle(**finetune)
    plan = FreezePlan.for_model(bundle.model, "hf", spec.finetune)
    want = {p for b in plan.blocks if b.name in blocks for p in b.params}
    assert plan.trainable(0) == want
    plan.apply(bundle.model, 0)
    assert {n for n, p in bundle.model.named_parameters() if p.requires_grad} == want


def test_last_k_larger_than_the_model_names_k_and_the_count(bert_dir, text_csvs, text_spec):
    spec = text_spec(bert_dir, text_csvs)
    spec.finetune.strategy, spec.finetune.k = "last_k", 5
    bundle = models.build_model(spec, models.resolve_task(spec), 2, ["a", "b"])
    with pytest.raises(InvalidJobInput, match=r"finetune\.k: 5 .* 4 blocks .*; use at most 4,"):
        FreezePlan.for_model(bundle.model, "hf", spec.finetune)


def test_lora_plan_needs_adapters_in_the_model():
    with pytest.raises(InvalidJobInput, match="lora, but the model has no LoRA adapters"):
        FreezePlan.for_model(
            architectures.SmallCNN(), "torchvision", spec_pb2.FinetuneSpec(strategy="lora")
        )


def test_patterns_frozen_wins(bert_bundle):
    spec, bundle = bert_bundle(
        strategy="patterns", trainable=[r"layer\.1\.", "classifier"], frozen=["bias$"]
    )
    plan = FreezePlan.for_model(bundle.model, "hf", spec.finetune)
    got = plan.trainable(0)
    assert got and all(
        ("layer.1." in n or "classifier" in n) and not n.endswith("bias") for n in got
    )
    assert "classifier.weight" in got
    assert "partial" in plan.table(bundle.model)


def test_gradual_unfreezes_one_block_from_the_top_every_n_epochs(bert_bundle):
    spec, bundle = bert_bundle(strategy="gradual", unfreeze_every=2)
    plan = FreezePlan.for_model(bundle.model, "hf", spec.finetune)
    by_name = {b.name: set(b.params) for b in plan.blocks}
    head, pooler = by_name["head"], by_name["pooler"]
    assert plan.trainable(0) == plan.trainable(1) == head
    assert plan.trainable(2) == head | pooler
    assert plan.trainable(4) == head | pooler | by_name["layer.1"]
    assert plan.trainable(6) == head | pooler | by_name["layer.1"] | by_name["layer.0"]
    assert plan.trainable(8) == {p for b in plan.blocks for p in b.params}
    assert "from epoch 3" in plan.table(bundle.model)


def test_lp_ft_probes_then_trains_everything(bert_bundle):
    spec, bundle = bert_bundle(strategy="lp_ft", probe_epochs=1)
    plan = FreezePlan.for_model(bundle.model, "hf", spec.finetune)
    assert plan.dynamic
    assert plan.trainable(0) == set(plan.blocks[-1].params)
    assert plan.trainable(1) == {n for n, _ in bundle.model.named_parameters()}


def test_frozen_batchnorm_stays_in_eval_mode():
    model = architectures.SmallCNN()
    plan = FreezePlan.for_model(
        model, "torchvision", spec_pb2.FinetuneSpec(strategy="last_k", k=1), "head"
    )
    model.train()
    plan.apply(model, 0)
    assert not model.stem[1].training and not model.stage1[1].training
    assert model.stage2[1].training and model.training
    before = model.stem[1].running_mean.clone()
    model(torch.randn(4, 1, 28, 28) + 3)
    assert torch.equal(model.stem[1].running_mean, before)


def test_plan_table_builds_the_model_without_data(smallcnn_checkpoint, image_spec):
    spec = image_spec(
        smallcnn_checkpoint, finetune={"strategy": "last_k", "k": 1}, model={"num_labels": 10}
    )
    text = plan_table(spec)
    assert "strategy last_k" in text
    lines = {line.split()[0]: line.split()[-1] for line in text.splitlines()[3:]}
    assert lines == {"stem": "no", "stage1": "no", "stage2": "yes", "head": "yes"}


def test_plan_of_the_alexnet_example_needs_no_download(tmp_path, monkeypatch):
    """`ftctl plan examples/cifar10-alexnet.yaml` offline: the table is the architecture's,
    whatever its weights, so the pretrained weights (~230 MB) are not fetched for it."""
    from tunefleet.spec import load_job_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty weights cache
    example = Path(__file__).parents[2] / "examples" / "cifar10-alexnet.yaml"
    spec = load_job_file(example, check_paths=False)
    text = plan_table(spec)
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines()[3:]}
    assert rows["classifier.4"] == "yes" and rows["classifier.1"] == "no"  # fc7 + the new layer
    assert rows["head"] == "yes" and "trainable at start 16,822,282 of" in text
    assert not (tmp_path / "torch-home").exists()
