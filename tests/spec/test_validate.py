"""The one validator: every problem, with its field path, before anything is queued."""

import json

import pytest

from tunefleet.spec import SpecError, load_job_file, prepare, resolve_defaults, spec_to_dict

GOOD = """\
name: minilm-topics
model: {source: hf, name: ./model, num_labels: 4}
data:
  source: csv
  train: data/train.csv
  eval: data/test.csv
  text_column: text
  label_column: label
  max_length: 128
finetune: {strategy: last_k, k: 2}
optimizer: {name: adamw, lr: 5.0e-5, weight_decay: 0.01}
schedule: {name: linear, warmup_ratio: 0.06}
train: {epochs: 3, batch_size: 32, max_grad_norm: 1.0, precision: "no", seed: 0}
resources: {gpus: 0}
"""


@pytest.fixture
def job_dir(tmp_path):
    (tmp_path / "data").mkdir()
    for split in ("train", "test"):
        (tmp_path / "data" / f"{split}.csv").write_text("text,label\nhello,a\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 6}))
    return tmp_path


def write(folder, text, name="job.yaml"):
    path = folder / name
    path.write_text(text)
    return path


def errors_of(path) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        load_job_file(path)
    return {e.path: e.message for e in info.value.errors}


def test_good_spec_resolves_paths_and_defaults(job_dir):
    spec = load_job_file(write(job_dir, GOOD))
    assert spec.data.train == str(job_dir / "data" / "train.csv")
    assert spec.model.name == str(job_dir / "model")
    assert spec.train.log_every_steps == 10 and spec.eval.metric == "accuracy"
    assert spec.resources.processes == 1
    # Idempotent: the coordinator re-prepares what the client sent.
    assert prepare(spec) == spec
    assert resolve_defaults(spec) == spec


def test_multi_node_resources_are_per_node(job_dir):
    cpu = GOOD.replace("resources: {gpus: 0}", "resources: {nodes: 2, gpus: 0, processes: 2}")
    spec = load_job_file(write(job_dir, cpu))
    assert (spec.resources.nodes, spec.resources.processes, spec.resources.gpus) == (2, 2, 0)
    gpu = GOOD.replace("resources: {gpus: 0}", "resources: {nodes: 4, gpus: 8}")
    assert load_job_file(write(job_dir, gpu)).resources.processes == 8  # per node


def test_hub_ids_stay_hub_ids(job_dir):
    text = GOOD.replace("./model", "sentence-transformers/all-MiniLM-L6-v2")
    spec = load_job_file(write(job_dir, text))
    assert spec.model.name == "sentence-transformers/all-MiniLM-L6-v2"


def test_every_problem_reported_together(job_dir):
    bad = (
        GOOD.replace("epochs: 3", "epochs: 0")
        .replace("lr: 5.0e-5", "lr: 0")
        .replace("k: 2", "k: 9")
        .replace("data/test.csv", "data/missing.csv")
        .replace("max_length: 128", "max_length: 128\n  colour: blue")
        .replace('precision: "no"', "precision: no")
        .replace("batch_size: 32", "batch_size: big")
    )
    errs = errors_of(write(job_dir, bad))
    assert set(errs) == {
        "train.epochs",
        "optimizer.lr",
        "finetune.k",
        "data.eval",
        "data.colour",
        "train.precision",
        "train.batch_size",
    }
    assert "8 blocks" in errs["finetune.k"]  # embeddings, 6 layers, the pooler
    assert "missing.csv" in errs["data.eval"]
    assert "unknown field" in errs["data.colour"]
    assert "quote it" in errs["train.precision"]


@pytest.mark.parametrize(
    ("patch", "path", "fragment"),
    [
        ({"finetune": {"strategy": "lora", "lora": {"r": 0}}}, "finetune.lora.r", ">= 1"),
        ({"finetune": {"strategy": "lora", "lora": {"alpha": 0}}}, "finetune.lora.alpha", "> 0"),
        (
            {"finetune": {"strategy": "lora", "lora": {"dropout": 1.0}}},
            "finetune.lora.dropout",
            "[0, 1)",
        ),
        (
            {"finetune": {"strategy": "lora", "lora": {"target_modules": ["query", "query"]}}},
            "finetune.lora.target_modules[1]",
            "twice",
        ),
        ({"finetune": {"strategy": "full", "lora": {"r": 4}}}, "finetune.lora", "only applies"),
        (
            {"model": {"source": "hf", "name": "some/model", "init": "scratch"}},
            "model.init",
            "one of: pretrained, random",
        ),
        ({"finetune": {"strategy": "sideways"}}, "finetune.strategy", "one of"),
        (  # issue 16's `strategy: auto` is a command: it names it
            {"finetune": {"strategy": "auto"}},
            "finetune.strategy",
            "ftctl sweep suggest JOB.yaml",
        ),
        ({"finetune": {"strategy": "full", "k": 2}}, "finetune.k", "only applies"),
        ({"optimizer": {"name": "adamw", "momentum": 0.9}}, "optimizer.momentum", "only applies"),
        ({"optimizer": {"name": "sgd", "betas": [0.9, 0.9]}}, "optimizer.betas", "adam"),
        ({"schedule": {"name": "cosine", "min_lr": 1.0}}, "schedule.min_lr", "below"),
        ({"train": {"precision": "fp16"}}, "train.precision", "GPU"),
        ({"resources": {"nodes": 0}}, "resources.nodes", ">= 1"),
        (
            {"train": {"checkpoint_every_minutes": -1}},
            "train.checkpoint_every_minutes",
            ">= 0",
        ),
        (
            {"resources": {"nodes": 2, "gpus": 1, "processes": 2}},
            "resources.processes",
            "GPUs per node",
        ),
        ({"resources": {"gpus": 1, "processes": 2}}, "resources.processes", "per GPU"),
        (
            {"finetune": {"strategy": "patterns", "trainable": ["("]}},
            "finetune.trainable[0]",
            "regular",
        ),
        ({"compression": {"prune": {"amount": 1.5}}}, "compression.prune.amount", "(0, 1)"),
        (
            {"data": {"source": "torchvision", "name": "ImageNet", "root": "/"}},
            "data.name",
            "one of",
        ),
        ({"model": {"source": "job"}}, "model.job", "required"),
        (
            {"data": {"source": "csv", "train": "/t.csv", "max_length": -1}},
            "data.max_length",
            "[0, 8192] (0: the model's own limit)",
        ),
        ({"model": {"source": "torchvision", "name": "resnet18"}}, "data.source", "text data"),
    ],
)
def test_single_problems_name_their_field(job_dir, patch, path, fragment):
    base = {
        "name": "t",
        "model": {"source": "hf", "name": str(job_dir / "model")},
        "data": {"source": "csv", "train": str(job_dir / "data" / "train.csv")},
    }
    base.update(patch)
    if "data" not in patch and base["model"].get("source") == "torchvision":
        pass
    with pytest.raises(SpecError) as info:
        prepare(base)
    errs = {e.path: e.message for e in info.value.errors}
    assert path in errs, errs
    assert fragment in errs[path]


def test_file_level_errors_name_the_file(tmp_path):
    assert "no such file" in errors_of(tmp_path / "absent.yaml")["<file>"]
    assert "line 3" in errors_of(write(tmp_path, "name: x\nmodel: [\n"))["<file>"]
    assert "empty" in errors_of(write(tmp_path, ""))["<file>"]
    assert "mapping" in errors_of(write(tmp_path, "- a\n- b\n"))["<root>"]


def test_relative_paths_rejected_without_a_base(job_dir):
    spec = {
        "name": "t",
        "model": {"source": "hf", "name": "x/y"},
        "data": {"source": "csv", "train": "data/train.csv"},
    }
    with pytest.raises(SpecError) as info:
        prepare(spec)
    assert "absolute path" in str(info.value)


def test_yaml_round_trips_through_the_proto(job_dir):
    spec = load_job_file(write(job_dir, GOOD))
    assert prepare(spec_to_dict(spec)) == spec


def test_unquoted_exponent_is_a_number(job_dir):
    spec = load_job_file(write(job_dir, GOOD.replace("lr: 5.0e-5", "lr: 5e-5")))
    assert spec.optimizer.lr == pytest.approx(5e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "step"])
def test_resolved_specs_validate_again(job_dir, optimizer, schedule):
    """The coordinator re-validates what clients resolved: defaults must never conflict."""
    text = GOOD.replace("name: adamw", f"name: {optimizer}").replace(
        "name: linear", f"name: {schedule}"
    )
    spec = load_job_file(write(job_dir, text))
    assert prepare(spec) == spec


def test_lora_defaults_only_for_lora(job_dir):
    base = {
        "name": "t",
        "model": {"source": "hf", "name": str(job_dir / "model")},
        "data": {"source": "csv", "train": str(job_dir / "data" / "train.csv")},
    }
    spec = prepare({**base, "finetune": {"strategy": "lora"}})
    lora = spec.finetune.lora
    assert (lora.r, lora.alpha, lora.dropout) == (8, 16.0, 0.0)
    assert list(lora.target_modules) == ["query", "value"]
    assert spec.model.init == "pretrained"
    assert not prepare(base).finetune.HasField("lora")
    given = prepare(
        {**base, "finetune": {"strategy": "lora", "lora": {"r": 4, "target_modules": ["key"]}}}
    )
    assert given.finetune.lora.r == 4 and list(given.finetune.lora.target_modules) == ["key"]
    # torchvision layer names vary by architecture: no target list means every adaptable layer.
    vision = prepare(
        {
            "name": "t",
            "model": {"source": "torchvision", "name": "resnet18"},
            "data": {"source": "imagefolder", "root": str(job_dir)},
            "finetune": {"strategy": "lora"},
        }
    )
    assert list(vision.finetune.lora.target_modules) == []


def test_random_init_conflicts_with_weights_and_checkpoint(job_dir):
    ckpt = job_dir / "w.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(SpecError) as info:
        prepare(
            {
                "name": "t",
                "model": {
                    "source": "torchvision",
                    "name": "resnet18",
                    "init": "random",
                    "checkpoint": str(ckpt),
                },
                "data": {"source": "imagefolder", "root": str(job_dir)},
            }
        )
    assert [e.path for e in info.value.errors] == ["model.checkpoint"]
    assert "model.init random" in info.value.errors[0].message


def test_last_k_checked_against_torchvision_block_counts(job_dir):
    with pytest.raises(SpecError) as info:
        prepare(
            {
                "name": "t",
                "model": {"source": "torchvision", "name": "vgg11_bn"},
                "data": {"source": "imagefolder", "root": str(job_dir)},
                "finetune": {"strategy": "last_k", "k": 11},  # 8 convs, fc6, fc7
            }
        )
    assert {e.path: e.message for e in info.value.errors}["finetune.k"].startswith("11")


def test_prune_recovery_steps_are_accepted(job_dir):
    text = GOOD + "compression:\n  prune: {amount: 0.5, method: structured, recovery_steps: 50}\n"
    spec = load_job_file(write(job_dir, text))
    assert spec.compression.prune.recovery_steps == 50
    assert prepare(spec) == spec
    bad = text.replace("recovery_steps: 50", "recovery_steps: -1")
    assert ">= 0" in errors_of(write(job_dir, bad))["compression.prune.recovery_steps"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("s3:/bucket/train.csv", "not a URL (slashes missing after s3:): did you mean s3://"),
        ("gs:bucket/train.csv", "did you mean gs://bucket/train.csv?"),
        ("file:/data/train.csv", "did you mean file:///data/train.csv?"),
        ("S3://bucket/train.csv", "write the scheme in lower case: s3://"),
    ],
)
def test_a_url_with_a_scheme_typo_is_named_not_taken_for_a_relative_path(job_dir, value, message):
    """`s3:/bucket/x` used to become JOB_DIR/s3:/bucket/x (`no such file`, or on submit a
    path sent to the workers, which failed there); `S3://` passed here and failed on the
    worker (fsspec knows only lower-case protocols)."""
    text = GOOD.replace("train: data/train.csv", f"train: {value}")
    with pytest.raises(SpecError) as info:
        load_job_file(write(job_dir, text))
    errs = {e.path: e.message for e in info.value.errors}
    assert list(errs) == ["data.train"], errs
    assert message in errs["data.train"], errs
