"""The new output layer: what head_only trains on every architecture, how it is drawn, and
whose dropout sits in front of it.

"Train only the new layer" must mean exactly the new Linear (in_features x n + n parameters)
on every architecture the engine accepts; pretrained layers between the body and that layer
(BERT's pooler, AlexNet's fc6/fc7) are top blocks of the body that last_k reaches first.
Models are built on the meta device or from tiny configs, so this stays fast.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunefleet.spec import prepare, resolve_defaults
from tunefleet.spec.choices import TORCHVISION_ARCHS
from tunefleet.spec.model_blocks import body_block_count, hf_body_block_count
from tunefleet.v1 import spec_pb2
from tunefleet.worker.engine import architectures, heads
from tunefleet.worker.engine.freeze import FreezePlan

N = 3  # labels


def _head(**fields) -> dict:
    return heads.head_dict(spec_pb2.HeadSpec(**fields))


def _plan(model, kind, head_path, **finetune) -> FreezePlan:
    return FreezePlan.for_model(model, kind, spec_pb2.FinetuneSpec(**finetune), head_path)


def _numel(model, names) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def _check_probe_and_last_k(model, kind, head_path, in_features, hidden=0):
    head_only = _plan(model, kind, head_path, strategy="head_only")
    want = (in_features * hidden + hidden + hidden * N + N) if hidden else in_features * N + N
    assert _numel(model, head_only.trainable(0)) == want
    body = head_only.body
    for k in (1, 2):
        plan = _plan(model, kind, head_path, strategy="last_k", k=k)
        top = {p for b in body[len(body) - k :] for p in b.params}
        assert plan.trainable(0) == top | set(head_only.blocks[-1].params)
    return body


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
@pytest.mark.parametrize("hidden", [0, 16])
def test_head_only_trains_exactly_the_new_layer_on_every_torchvision_arch(arch, hidden):
    with torch.device("meta"):
        model = architectures.build_torchvision_arch(arch)
        in_features = heads.find_torchvision_head(model)[1].in_features
        model, head_path = heads.replace_torchvision_head(model, N, _head(hidden=hidden))
    body = _check_probe_and_last_k(model, "torchvision", head_path, in_features, hidden)
    assert len(body) == body_block_count("torchvision", arch)


def test_alexnet_last_k_reaches_fc7_then_fc6_as_the_method_does():
    """The method's AlexNet example adjusts "only the weights of the last two layers":
    last_k 1 = fc7 + the new layer; last_k 2 adds fc6."""
    with torch.device("meta"):
        model, head_path = heads.replace_torchvision_head(
            architectures.build_torchvision_arch("alexnet"), N, _head()
        )
    plan = _plan(model, "torchvision", head_path, strategy="last_k", k=1)
    assert [b.name for b in plan.blocks[-3:]] == ["classifier.1", "classifier.4", "head"]
    assert _numel(model, plan.trainable(0)) == 4096 * 4096 + 4096 + 4096 * N + N
    rows = {name: trainable for name, _, trainable in plan.rows()}
    assert rows["classifier.4"] == "yes" and rows["classifier.1"] == "no"
    probe = _plan(model, "torchvision", head_path, strategy="head_only")
    assert "trainable at start 12,291 of" in probe.table(model)


def _tiny_hf(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        model_type,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=99,
        max_position_embeddings=64,
        **extra,
    )
    torch.manual_seed(0)
    with architectures.quiet_transformers():
        return config, AutoModelForSequenceClassification.from_config(config)


HF_FAMILIES = {
    "bert": {},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37},
    "roberta": {},
    "xlm-roberta": {},
    "camembert": {},
    "electra": {"embedding_size": 16},
    "deberta-v2": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"]},
    "mpnet": {},
    "albert": {"embedding_size": 16},
}


@pytest.mark.parametrize("model_type", list(HF_FAMILIES))
def test_head_only_trains_exactly_the_new_layer_on_hf_families(model_type, tmp_path):
    config, model = _tiny_hf(model_type, **HF_FAMILIES[model_type])
    model, head_path = heads.replace_hf_head(model, N, ["a", "b", "c"], _head())
    in_features = model.get_submodule(head_path).in_features
    body = _check_probe_and_last_k(model, "hf", head_path, in_features)
    config.save_pretrained(tmp_path)
    known = hf_body_block_count(tmp_path)
    assert known is None or known == len(body)  # what the validator bounds last_k with


def _stats(head: dict, *, in_features=512, n=400):
    layer = heads.make_head(in_features, n, head, dropout=False)
    heads.init_head(layer, head, "torchvision", nn.Identity())
    return layer.weight.std().item(), layer.bias.std().item(), layer.bias.abs().max().item()


def test_head_init_follows_the_spec():
    # The method verbatim: W', b' ~ N(0, 0.01) with 0.01 the variance, i.e. std 0.1.
    w, b, _ = _stats(_head(init="normal", init_std=0.1, bias_init="normal", bias_std=0.1))
    assert w == pytest.approx(0.1, rel=0.02) and b == pytest.approx(0.1, rel=0.15)
    w, _, bmax = _stats(_head(init="normal", init_std=0.03))
    assert w == pytest.approx(0.03, rel=0.02) and bmax == 0.0
    w, b, _ = _stats(_head(init="normal", init_std=0.05, bias_init="normal"))  # bias: init_std
    assert w == pytest.approx(0.05, rel=0.02) and b == pytest.approx(0.05, rel=0.15)
    w, _, bmax = _stats(_head())  # auto on torchvision: N(0, 0.01), bias 0
    assert w == pytest.approx(0.01, rel=0.02) and bmax == 0.0


def test_hf_heads_auto_is_the_methods_init_and_model_the_models_own_initializer_range():
    """auto on a Hugging Face model: the seed method's N(0, 0.01) with 0.01 the variance,
    weights and bias at std 0.1; init model: the config's initializer_range, bias 0 (what
    from_pretrained and HF Trainer give)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        hidden_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=99,
        initializer_range=0.05,
    )
    labels = [str(i) for i in range(300)]
    model, path = heads.replace_hf_head(
        BertForSequenceClassification(config), 300, labels, _head(init="model")
    )
    layer = model.get_submodule(path)
    assert layer.weight.std().item() == pytest.approx(0.05, rel=0.03)
    assert torch.all(layer.bias == 0)
    model, path = heads.replace_hf_head(BertForSequenceClassification(config), 300, labels, _head())
    layer = model.get_submodule(path)
    assert layer.weight.std().item() == pytest.approx(0.1, rel=0.03)
    assert layer.bias.std().item() == pytest.approx(0.1, rel=0.25)
    assert "(auto: method), bias N(0, 0.1^2)" in heads.describe_init(_head(), model, "hf")
    # A linear probe first (head_only, lp_ft, gradual): auto is the model's own init.
    for strategy in ("head_only", "lp_ft", "gradual"):
        probe = heads.head_dict(spec_pb2.HeadSpec(), strategy)
        model, path = heads.replace_hf_head(
            BertForSequenceClassification(config), 300, labels, probe
        )
        layer = model.get_submodule(path)
        assert layer.weight.std().item() == pytest.approx(0.05, rel=0.03), strategy
        assert torch.all(layer.bias == 0)
    # An explicit bias_init wins over auto's choice.
    model, path = heads.replace_hf_head(
        BertForSequenceClassification(config), 300, labels, _head(bias_init="zeros")
    )
    assert torch.all(model.get_submodule(path).bias == 0)


def test_unset_dropout_keeps_the_models_own_and_a_value_overrides_it():
    from transformers import BertConfig, BertForSequenceClassification

    def bert(**kw):
        config = BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            vocab_size=99,
            hidden_dropout_prob=0.1,
            **kw,
        )
        return BertForSequenceClassification(config)

    model, _ = heads.replace_hf_head(bert(), N, ["a", "b", "c"], _head())
    assert model.dropout.p == 0.1 and isinstance(model.classifier, nn.Linear)
    model, _ = heads.replace_hf_head(bert(classifier_dropout=0.3), N, ["a", "b", "c"], _head())
    assert model.dropout.p == 0.3 and model.config.classifier_dropout == 0.3
    model, _ = heads.replace_hf_head(bert(), N, ["a", "b", "c"], _head(dropout=0.0))
    assert model.dropout.p == 0.0 and model.config.classifier_dropout == 0.0

    # torchvision: efficientnet's classifier carries Dropout(0.2) right before the layer.
    with torch.device("meta"):
        net, path = heads.replace_torchvision_head(
            architectures.build_torchvision_arch("efficientnet_b0"), N, _head()
        )
        assert net.classifier[0].p == 0.2 and isinstance(net.get_submodule(path), nn.Linear)
        net, path = heads.replace_torchvision_head(
            architectures.build_torchvision_arch("efficientnet_b0"), N, _head(dropout=0.5)
        )
        assert net.classifier[0].p == 0.5 and isinstance(net.get_submodule(path), nn.Linear)
        resnet, path = heads.replace_torchvision_head(
            architectures.build_torchvision_arch("resnet18"), N, _head()
        )
        assert isinstance(resnet.fc, nn.Linear)  # none of its own, none added
        resnet, path = heads.replace_torchvision_head(
            architectures.build_torchvision_arch("resnet18"), N, _head(dropout=0.5)
        )
        assert isinstance(resnet.fc[0], nn.Dropout) and resnet.fc[0].p == 0.5


def test_head_defaults_and_their_validation():
    spec = resolve_defaults(spec_pb2.JobSpec())
    head = spec.model.head
    assert head.init == "auto" and head.bias_init == "auto"
    assert not head.HasField("dropout") and not head.HasField("init_std")
    spec = resolve_defaults(
        spec_pb2.JobSpec(
            model=spec_pb2.ModelSpec(head=spec_pb2.HeadSpec(init_std=0.1, bias_init="normal"))
        )
    )
    assert spec.model.head.init == "normal" and spec.model.head.bias_std == pytest.approx(0.1)
    assert resolve_defaults(spec) == spec  # idempotent

    from tunefleet.spec import SpecError

    base = {
        "name": "x",
        "model": {"source": "hf", "name": "bert-base-uncased"},
        "data": {"source": "hf", "name": "glue"},
    }
    for head, path in (
        ({"init": "auto", "init_std": 0.1}, "model.head.init_std"),
        ({"init": "method", "init_std": 0.1}, "model.head.init_std"),
        ({"init": "glorot"}, "model.head.init"),
        ({"bias_std": 0.1}, "model.head.bias_std"),
        ({"bias_init": "uniform"}, "model.head.bias_init"),
    ):
        with pytest.raises(SpecError, match=path.replace(".", r"\.")):
            prepare({**base, "model": {**base["model"], "head": head}}, check_paths=False)


MODERNBERT = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "cls_token_id": 2}


def test_a_dropout_value_sets_modernberts_own_and_the_head_stays_one_linear():
    # ModernBERT calls the dropout in front of its classifier `drop`, not `dropout`: a new
    # Dropout stacked on it made the head classifier.0/classifier.1, which from_pretrained
    # cannot load (the exported folder came back with a random head).
    _, model = _tiny_hf("modernbert", sep_token_id=3, **MODERNBERT)
    model, path = heads.replace_hf_head(model, N, ["a", "b", "c"], _head(dropout=0.3))
    assert path == "classifier" and isinstance(model.classifier, nn.Linear)
    assert model.drop.p == 0.3 and model.config.classifier_dropout == 0.3


@pytest.mark.parametrize("dropout", [None, 0.2])
def test_a_head_unlike_the_models_own_loads_back_with_load_model(tmp_path, dropout):
    # CTRL's classifier has no bias and no dropout in front of it: the new head (with a
    # bias, and with head.dropout a Dropout of its own) is not what from_pretrained
    # rebuilds, which loaded it without its bias, or drew it at random; load_model must not.
    from tunefleet.worker.engine.export import export_model, load_model
    from tunefleet.worker.engine.int8 import load_int8, quantize_dynamic_int8, save_int8

    _, model = _tiny_hf("ctrl", n_embd=32, n_layer=2, n_head=2, dff=37, n_positions=64)
    head = _head() if dropout is None else _head(dropout=dropout)
    model, path = heads.replace_hf_head(model, N, ["a", "b", "c"], head)
    assert isinstance(model.get_submodule(path), nn.Sequential if dropout else nn.Linear)
    with torch.no_grad():
        for p in model.get_submodule(path).parameters():
            p.normal_()
    folder = export_model(
        model.eval(), tmp_path / "m", kind="hf", arch="ctrl", labels=["a", "b", "c"], head=head
    )
    quantized = quantize_dynamic_int8(model)
    save_int8(quantized, tmp_path / "q", skeleton=folder)
    ids = torch.tensor([[1, 5, 6, 7, 2]])
    with torch.no_grad():
        assert torch.equal(load_model(folder)(input_ids=ids).logits, model(input_ids=ids).logits)
        assert torch.equal(
            load_int8(tmp_path / "q")(input_ids=ids).logits, quantized(input_ids=ids).logits
        )
