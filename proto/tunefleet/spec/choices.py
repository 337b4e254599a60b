"""The allowed values of every choice field, in one place (the proto lists them too)."""

MODEL_SOURCES = ("hf", "torchvision", "job")
DATA_SOURCES = ("hf", "csv", "jsonl", "parquet", "torchvision", "imagefolder")
FILE_DATA_SOURCES = ("csv", "jsonl", "parquet")
TEXT_DATA_SOURCES = ("hf", "csv", "jsonl", "parquet")
IMAGE_DATA_SOURCES = ("torchvision", "imagefolder")
TORCHVISION_DATASETS = ("FashionMNIST", "MNIST", "CIFAR10", "CIFAR100")
AUGMENT = ("none", "light", "strong")
HEAD_INIT = ("auto", "method", "model", "normal", "default")
HEAD_BIAS_INIT = ("auto", "zeros", "normal")
# head.init normal without init_std: the std of the weights (the seed method's scale).
HEAD_INIT_STD = 0.01
# The seed method's N(0, 0.01), 0.01 the variance: head.init method draws weights and bias at std 0.1.
HEAD_METHOD_STD = 0.1
STRATEGIES = ("full", "head_only", "last_k", "patterns", "gradual", "lp_ft", "lora")
FEATURE_CACHE = ("auto", "off")
UNSUPPORTED_STRATEGIES: tuple[str, ...] = ()
MODEL_INITS = ("pretrained", "random")
# LoRA defaults (finetune.lora, strategy lora only). Hugging Face BERT-like models name their
# attention projections query/key/value; an empty target list means every Linear/Conv layer
# below the head (the default for torchvision and source: job models, whose names vary).
LORA_R = 8
LORA_ALPHA = 16.0
LORA_DROPOUT = 0.0
LORA_HF_TARGETS = ("query", "value")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear", "cosine", "step")
PRECISIONS = ("auto", "no", "bf16", "fp16")
EVAL_METRICS = ("accuracy", "macro_f1", "loss")
PRUNE_SCOPES = ("global", "layer")
PRUNE_METHODS = ("unstructured", "structured")
QUANTIZE_METHODS = ("dynamic_int8",)

# torchvision architectures the engine knows how to re-head, and tunefleet's own small CNN.
TORCHVISION_ARCHS = (
    "smallcnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "alexnet",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "vit_b_16",
    "vit_b_32",
    "vit_l_16",
)


def one_of(values: tuple[str, ...]) -> str:
    return "one of: " + ", ".join(values)
