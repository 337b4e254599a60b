"""Param groups: layerwise lr decay, lr_groups, no weight decay on biases/norms, optimizers."""

from __future__ import annotations

import pytest
import torch

from tunefleet.spec import resolve_defaults
from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine import architectures, models
from tunefleet.worker.engine.freeze import FreezePlan
from tunefleet.worker.engine.optim import build_optimizer, build_param_groups, no_weight_decay


@pytest.fixture
def bert(bert_dir, text_csvs, text_spec):
    spec = text_spec(bert_dir, text_csvs, train={"epochs": 4})
    return models.build_model(spec, models.resolve_task(spec), 2, ["neg", "pos"]).model


def groups_for(model, kind="hf", head_path="", **finetune):
    spec = resolve_defaults(
        spec_pb2.JobSpec(
            finetune=spec_pb2.FinetuneSpec(**finetune),
            optimizer=spec_pb2.OptimizerSpec(name="adamw", lr=1e-3, weight_decay=0.1),
            train=spec_pb2.TrainSpec(epochs=4),
        )
    )
    plan = FreezePlan.for_model(model, kind, spec.finetune, head_path)
    return plan, build_param_groups(model, plan, spec.finetune, spec.optimizer), spec


def test_layerwise_lr_decay_by_depth_from_the_top(bert):
    _, groups, _ = groups_for(bert, layerwise_lr_decay=0.5)
    lr = {g["name"]: g["lr"] for g in groups}
    assert groups[0]["name"] == "head"
    assert lr["head"] == pytest.approx(1e-3)
    assert lr["pooler"] == pytest.approx(1e-3 * 0.5)
    assert lr["layer.1"] == pytest.approx(1e-3 * 0.25)
    assert lr["layer.0"] == pytest.approx(1e-3 * 0.125)
    assert lr["embeddings"] == pytest.approx(1e-3 * 0.0625)
    assert lr["layer.1.no_decay"] == lr["layer.1"]


def test_head_lr_scale_defaults_and_overrides(bert):
    lr = {g["name"]: g["lr"] for g in groups_for(bert)[1]}
    assert lr["head"] == lr["layer.1"] == pytest.approx(1e-3)
    lr = {g["name"]: g["lr"] for g in groups_for(bert, head_lr_scale=10.0)[1]}
    assert lr["head"] == pytest.approx(1e-2) and lr["layer.1"] == pytest.approx(1e-3)
    _, groups, spec = groups_for(bert, strategy="head_only")  # alone: the job's lr is its own
    assert spec.finetune.head_lr_scale == 1.0 and [g["lr"] for g in groups] == [1e-3, 1e-3]
    probe = resolve_defaults(spec_pb2.JobSpec(finetune=spec_pb2.FinetuneSpec(strategy="head_only")))
    assert probe.optimizer.lr == pytest.approx(1e-3)  # a linear probe's default lr
    assert resolve_defaults(spec_pb2.JobSpec()).optimizer.lr == pytest.approx(5e-5)


def test_no_weight_decay_for_biases_and_norms(bert):
    _, groups, _ = groups_for(bert)
    names = {id(p): n for n, p in bert.named_parameters()}
    for group in groups:
        for p in group["params"]:
            name = names[id(p)]
            decayed = group["weight_decay"] > 0
            assert decayed == (not (name.endswith("bias") or "LayerNorm" in name)), name
            assert group["name"].endswith(".no_decay") == (not decayed)
    assert no_weight_decay("layer1.0.bn1.weight", torch.zeros(3))
    assert not no_weight_decay("fc.weight", torch.zeros(3, 3))


def test_lr_groups_override_by_regex_first_match_wins(bert):
    _, groups, _ = groups_for(
        bert,
        layerwise_lr_decay=0.5,
        lr_groups=[
            spec_pb2.LrGroup(pattern="classifier", lr=0.5),
            spec_pb2.LrGroup(pattern="classifier|pooler", lr=0.1),
        ],
    )
    by_name = {g["name"]: g for g in groups}
    assert by_name["lr_group.0"]["lr"] == 0.5 and by_name["lr_group.0.no_decay"]["lr"] == 0.5
    names = {id(p): n for n, p in bert.named_parameters()}
    assert {names[id(p)] for p in by_name["lr_group.1"]["params"]} == {"bert.pooler.dense.weight"}


def test_static_plans_hold_only_trainable_params_dynamic_plans_hold_all(bert):
    _, groups, _ = groups_for(bert, strategy="head_only")
    assert {g["name"] for g in groups} == {"head", "head.no_decay"}
    _, groups, _ = groups_for(bert, strategy="gradual")
    assert sum(len(g["params"]) for g in groups) == len(list(bert.parameters()))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_get_their_hyperparameters(name):
    model = architectures.SmallCNN()
    spec = resolve_defaults(
        spec_pb2.JobSpec(
            optimizer=spec_pb2.OptimizerSpec(
                name=name, lr=0.02, betas=[0.8, 0.9], nesterov=name == "sgd"
            ),
            train=spec_pb2.TrainSpec(epochs=1),
        )
    )
    plan = FreezePlan.for_model(model, "torchvision", spec.finetune, "head")
    opt = build_optimizer(
        build_param_groups(model, plan, spec.finetune, spec.optimizer), spec.optimizer
    )
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.02
    if name == "sgd":
        assert group["momentum"] == 0.9 and group["nesterov"]
    else:
        assert group["betas"] == (0.8, 0.9) and group["eps"] == 1e-8


def test_lr_groups_that_match_nothing_trainable_are_named_in_a_warning(
    tmp_path, bert_dir, text_csvs, text_spec, events
):
    """head_only trains the new layer alone: an lr group over the encoder (or a typo)
    changes nothing, and the job's log says so rather than ignoring it silently."""
    from tunefleet.worker.engine.trainer import TrainingRun

    lr_groups = [{"pattern": "encoder", "lr": 1e-4}, {"pattern": "classifier", "lr": 0.5}]
    spec = text_spec(
        bert_dir, text_csvs, finetune={"strategy": "head_only", "lr_groups": lr_groups}
    )
    TrainingRun(spec, tmp_path, events).setup(resume=False)
    warnings = [e.log.message for e in events.kind("log") if e.log.level == "warning"]
    assert [w for w in warnings if "lr_groups" in w] == [
        "finetune.lr_groups[0]: pattern 'encoder' matches no parameter that trains under "
        "strategy head_only; its lr 0.0001 is not used"
    ]
