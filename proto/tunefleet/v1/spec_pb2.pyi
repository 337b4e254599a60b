from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobSpec(_message.Message):
    __slots__ = ("name", "model", "data", "finetune", "optimizer", "schedule", "train", "eval", "resources", "compression", "output", "priority", "labels", "sweep")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FINETUNE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: ModelSpec
    data: DataSpec
    finetune: FinetuneSpec
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    train: TrainSpec
    eval: EvalSpec
    resources: ResourceSpec
    compression: CompressionSpec
    output: OutputSpec
    priority: int
    labels: _containers.ScalarMap[str, str]
    sweep: SweepSpec
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., data: _Optional[_Union[DataSpec, _Mapping]] = ..., finetune: _Optional[_Union[FinetuneSpec, _Mapping]] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., schedule: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., train: _Optional[_Union[TrainSpec, _Mapping]] = ..., eval: _Optional[_Union[EvalSpec, _Mapping]] = ..., resources: _Optional[_Union[ResourceSpec, _Mapping]] = ..., compression: _Optional[_Union[CompressionSpec, _Mapping]] = ..., output: _Optional[_Union[OutputSpec, _Mapping]] = ..., priority: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., sweep: _Optional[_Union[SweepSpec, _Mapping]] = ...) -> None: ...

class SweepSpec(_message.Message):
    __slots__ = ("space", "metric", "mode", "max_trials", "max_concurrent", "seed", "algorithm", "pruner")
    class SpaceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SweepParam
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SweepParam, _Mapping]] = ...) -> None: ...
    SPACE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PRUNER_FIELD_NUMBER: _ClassVar[int]
    space: _containers.MessageMap[str, SweepParam]
    metric: str
    mode: str
    max_trials: int
    max_concurrent: int
    seed: int
    algorithm: str
    pruner: str
    def __init__(self, space: _Optional[_Mapping[str, SweepParam]] = ..., metric: _Optional[str] = ..., mode: _Optional[str] = ..., max_trials: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., seed: _Optional[int] = ..., algorithm: _Optional[str] = ..., pruner: _Optional[str] = ...) -> None: ...

class SweepParam(_message.Message):
    __slots__ = ("type", "values", "low", "high", "when")
    class WhenEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    type: str
    values: _containers.RepeatedScalarFieldContainer[str]
    low: float
    high: float
    when: _containers.ScalarMap[str, str]
    def __init__(self, type: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., when: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("source", "name", "num_labels", "labels", "weights", "checkpoint", "job", "revision", "head", "init")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_LABELS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    source: str
    name: str
    num_labels: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    weights: str
    checkpoint: str
    job: str
    revision: str
    head: HeadSpec
    init: str
    def __init__(self, source: _Optional[str] = ..., name: _Optional[str] = ..., num_labels: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., weights: _Optional[str] = ..., checkpoint: _Optional[str] = ..., job: _Optional[str] = ..., revision: _Optional[str] = ..., head: _Optional[_Union[HeadSpec, _Mapping]] = ..., init: _Optional[str] = ...) -> None: ...

class HeadSpec(_message.Message):
    __slots__ = ("init", "init_std", "dropout", "hidden", "bias_init", "bias_std")
    INIT_FIELD_NUMBER: _ClassVar[int]
    INIT_STD_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    BIAS_INIT_FIELD_NUMBER: _ClassVar[int]
    BIAS_STD_FIELD_NUMBER: _ClassVar[int]
    init: str
    init_std: float
    dropout: float
    hidden: int
    bias_init: str
    bias_std: float
    def __init__(self, init: _Optional[str] = ..., init_std: _Optional[float] = ..., dropout: _Optional[float] = ..., hidden: _Optional[int] = ..., bias_init: _Optional[str] = ..., bias_std: _Optional[float] = ...) -> None: ...

class DataSpec(_message.Message):
    __slots__ = ("source", "name", "root", "train", "eval", "text_column", "text_pair_column", "label_column", "max_length", "classes", "augment", "download", "num_workers", "image_size", "limit_train", "limit_eval", "config", "test", "validation_fraction", "validation_seed", "limit_test", "mean", "std", "group_by_length")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_COLUMN_FIELD_NUMBER: _ClassVar[int]
    TEXT_PAIR_COLUMN_FIELD_NUMBER: _ClassVar[int]
    LABEL_COLUMN_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_TRAIN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_EVAL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SEED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_TEST_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    source: str
    name: str
    root: str
    train: str
    eval: str
    text_column: str
    text_pair_column: str
    label_column: str
    max_length: int
    classes: _containers.RepeatedScalarFieldContainer[int]
    augment: str
    download: bool
    num_workers: int
    image_size: int
    limit_train: int
    limit_eval: int
    config: str
    test: str
    validation_fraction: float
    validation_seed: int
    limit_test: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    group_by_length: bool
    def __init__(self, source: _Optional[str] = ..., name: _Optional[str] = ..., root: _Optional[str] = ..., train: _Optional[str] = ..., eval: _Optional[str] = ..., text_column: _Optional[str] = ..., text_pair_column: _Optional[str] = ..., label_column: _Optional[str] = ..., max_length: _Optional[int] = ..., classes: _Optional[_Iterable[int]] = ..., augment: _Optional[str] = ..., download: _Optional[bool] = ..., num_workers: _Optional[int] = ..., image_size: _Optional[int] = ..., limit_train: _Optional[int] = ..., limit_eval: _Optional[int] = ..., config: _Optional[str] = ..., test: _Optional[str] = ..., validation_fraction: _Optional[float] = ..., validation_seed: _Optional[int] = ..., limit_test: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., group_by_length: _Optional[bool] = ...) -> None: ...

class FinetuneSpec(_message.Message):
    __slots__ = ("strategy", "k", "trainable", "frozen", "unfreeze_every", "probe_epochs", "lora", "layerwise_lr_decay", "lr_groups", "feature_cache", "head_lr_scale", "probe_lr")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    UNFREEZE_EVERY_FIELD_NUMBER: _ClassVar[int]
    PROBE_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    LAYERWISE_LR_DECAY_FIELD_NUMBER: _ClassVar[int]
    LR_GROUPS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_CACHE_FIELD_NUMBER: _ClassVar[int]
    HEAD_LR_SCALE_FIELD_NUMBER: _ClassVar[int]
    PROBE_LR_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    k: int
    trainable: _containers.RepeatedScalarFieldContainer[str]
    frozen: _containers.RepeatedScalarFieldContainer[str]
    unfreeze_every: int
    probe_epochs: int
    lora: LoraSpec
    layerwise_lr_decay: float
    lr_groups: _containers.RepeatedCompositeFieldContainer[LrGroup]
    feature_cache: str
    head_lr_scale: float
    probe_lr: float
    def __init__(self, strategy: _Optional[str] = ..., k: _Optional[int] = ..., trainable: _Optional[_Iterable[str]] = ..., frozen: _Optional[_Iterable[str]] = ..., unfreeze_every: _Optional[int] = ..., probe_epochs: _Optional[int] = ..., lora: _Optional[_Union[LoraSpec, _Mapping]] = ..., layerwise_lr_decay: _Optional[float] = ..., lr_groups: _Optional[_Iterable[_Union[LrGroup, _Mapping]]] = ..., feature_cache: _Optional[str] = ..., head_lr_scale: _Optional[float] = ..., probe_lr: _Optional[float] = ...) -> None: ...

class LoraSpec(_message.Message):
    __slots__ = ("r", "alpha", "dropout", "target_modules")
    R_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    r: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, r: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class LrGroup(_message.Message):
    __slots__ = ("pattern", "lr")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    lr: float
    def __init__(self, pattern: _Optional[str] = ..., lr: _Optional[float] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("name", "lr", "weight_decay", "momentum", "nesterov", "betas", "eps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    BETAS_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    lr: float
    weight_decay: float
    momentum: float
    nesterov: bool
    betas: _containers.RepeatedScalarFieldContainer[float]
    eps: float
    def __init__(self, name: _Optional[str] = ..., lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., momentum: _Optional[float] = ..., nesterov: _Optional[bool] = ..., betas: _Optional[_Iterable[float]] = ..., eps: _Optional[float] = ...) -> None: ...

class ScheduleSpec(_message.Message):
    __slots__ = ("name", "warmup_steps", "warmup_ratio", "min_lr", "step_size", "gamma")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_LR_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    warmup_steps: int
    warmup_ratio: float
    min_lr: float
    step_size: int
    gamma: float
    def __init__(self, name: _Optional[str] = ..., warmup_steps: _Optional[int] = ..., warmup_ratio: _Optional[float] = ..., min_lr: _Optional[float] = ..., step_size: _Optional[int] = ..., gamma: _Optional[float] = ...) -> None: ...

class TrainSpec(_message.Message):
    __slots__ = ("epochs", "max_steps", "batch_size", "grad_accum_steps", "max_grad_norm", "precision", "seed", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "max_restarts", "checkpoint_every_minutes")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRAD_ACCUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LOG_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    KEEP_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_MINUTES_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    max_steps: int
    batch_size: int
    grad_accum_steps: int
    max_grad_norm: float
    precision: str
    seed: int
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    max_restarts: int
    checkpoint_every_minutes: float
    def __init__(self, epochs: _Optional[int] = ..., max_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., grad_accum_steps: _Optional[int] = ..., max_grad_norm: _Optional[float] = ..., precision: _Optional[str] = ..., seed: _Optional[int] = ..., log_every_steps: _Optional[int] = ..., checkpoint_every_steps: _Optional[int] = ..., keep_checkpoints: _Optional[int] = ..., max_restarts: _Optional[int] = ..., checkpoint_every_minutes: _Optional[float] = ...) -> None: ...

class EvalSpec(_message.Message):
    __slots__ = ("every_steps", "metric", "early_stopping_patience", "batch_size")
    EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    every_steps: int
    metric: str
    early_stopping_patience: int
    batch_size: int
    def __init__(self, every_steps: _Optional[int] = ..., metric: _Optional[str] = ..., early_stopping_patience: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ResourceSpec(_message.Message):
    __slots__ = ("gpus", "processes", "nodes")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    gpus: int
    processes: int
    nodes: int
    def __init__(self, gpus: _Optional[int] = ..., processes: _Optional[int] = ..., nodes: _Optional[int] = ...) -> None: ...

class CompressionSpec(_message.Message):
    __slots__ = ("prune", "quantize")
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    prune: PruneSpec
    quantize: QuantizeSpec
    def __init__(self, prune: _Optional[_Union[PruneSpec, _Mapping]] = ..., quantize: _Optional[_Union[QuantizeSpec, _Mapping]] = ...) -> None: ...

class PruneSpec(_message.Message):
    __slots__ = ("amount", "scope", "method", "recovery_steps")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    amount: float
    scope: str
    method: str
    recovery_steps: int
    def __init__(self, amount: _Optional[float] = ..., scope: _Optional[str] = ..., method: _Optional[str] = ..., recovery_steps: _Optional[int] = ...) -> None: ...

class QuantizeSpec(_message.Message):
    __slots__ = ("method",)
    METHOD_FIELD_NUMBER: _ClassVar[int]
    method: str
    def __init__(self, method: _Optional[str] = ...) -> None: ...

class OutputSpec(_message.Message):
    __slots__ = ("dir",)
    DIR_FIELD_NUMBER: _ClassVar[int]
    dir: str
    def __init__(self, dir: _Optional[str] = ...) -> None: ...
