"""One dataclass per config group: the schema Hydra composes against, and what the code receives.

Registered in Hydra's ConfigStore as ``config_schema`` (the first default of conf/config.yaml), so
composition rejects an unknown key or a value of the wrong type. ``OmegaConf.to_object`` builds
these objects, and each ``__post_init__`` checks ranges, so a bad value is a ``UserError`` naming
its key before any job starts. Optional[...] rather than ``X | None``: OmegaConf 2.3 reads only
typing.Optional.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from xray_ablate.config.choices import (
    ATTRIBUTION_METHODS,
    BACKBONES,
    BALANCE_POLICIES,
    CLASSES,
    DEVICE_PATTERN,
    FENCES,
    FREEZE_MODES,
    MIN_IMAGE_SIZE,
    MIN_PREPARED_SIZE,
    OPTIMIZERS,
    QUALITY_DEVICE_PATTERN,
    SCHEDULES,
    SCRATCH_MODELS,
    VERIFY_MODES,
)
from xray_ablate.config.metrics import IMAGE_METRICS
from xray_ablate.errors import UserError


def _check(ok: bool, key: str, rule: str, value) -> None:
    if not ok:
        raise UserError(f"{key} must be {rule}, not {value!r}")


def _one_of(value, choices, key: str) -> None:
    _check(value in choices, key, f"one of {', '.join(map(str, choices))}", value)


def _seed(value: int, key: str) -> None:
    """numpy's generators take seeds in [0, 2**32) (a negative one failed at the first job)."""
    _check(0 <= value < 2**32, key, "an integer in [0, 2**32)", value)


def check_patient_pattern(pattern: str, key: str) -> None:
    """A file-name pattern whose first group is the patient (read where an image has no PatientID
    tag, so a bad one would fail only at the first such image, deep in ingestion)."""
    try:
        groups = re.compile(pattern).groups
    except re.error as err:
        raise UserError(f"{key}={pattern!r} is not a regular expression: {err}") from None
    _check(groups >= 1, key, "a regular expression with a group (the patient ID)", pattern)


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    cache_dir: str = MISSING
    mlruns_dir: str = MISSING
    reports_dir: str = MISSING
    checkpoint_dir: str = MISSING
    data_root: Optional[str] = None  # noqa: UP045


@dataclass
class SyntheticConfig:
    n: int = 300
    seed: int = 0
    size: int = 256

    def __post_init__(self):
        _seed(self.seed, "dataset.synthetic.seed")


@dataclass
class DatasetConfig:
    mode: str = "masked"
    root: Optional[str] = None  # noqa: UP045
    layout: str = "auto"
    annotations_dir: str = "annotations"
    images_dir: str = "images"
    release: str = "latest"  # darwin-py layout: which releases/<name>/ of a dataset folder
    patient_pattern: Optional[str] = None  # noqa: UP045
    bounds_tolerance: float = 2.0
    resize: str = "stretch"
    crop_to_lungs: bool = False
    metadata: Optional[str] = None  # noqa: UP045
    metadata_key: Optional[str] = None  # noqa: UP045
    train_fraction: float = 1.0
    synthetic: Optional[SyntheticConfig] = None  # noqa: UP045
    canary: bool = False  # the positive control's data (data/canary.py); the sweep sets it (audit.canary)

    def __post_init__(self):
        _one_of(self.mode, ("masked", "raw"), "dataset.mode")
        _one_of(self.layout, ("auto", "darwin", "imagefolder"), "dataset.layout")
        _one_of(self.resize, ("stretch", "pad"), "dataset.resize")
        _check(self.bounds_tolerance >= 0, "dataset.bounds_tolerance", ">= 0", self.bounds_tolerance)
        _check(0 < self.train_fraction <= 1, "dataset.train_fraction", "in (0, 1]", self.train_fraction)
        if self.patient_pattern is not None:
            check_patient_pattern(self.patient_pattern, "dataset.patient_pattern")
        if self.metadata_key is not None and self.metadata is None:  # it would be ignored without a word
            raise UserError(f"dataset.metadata_key={self.metadata_key!r} names a column of dataset.metadata, "
                            "which is not set: set dataset.metadata to the CSV, or leave metadata_key out")


@dataclass
class SplitConfig:
    seed: int = 0
    test_fraction: float = 0.30
    val_fraction: float = 0.25
    vary_with_seed: bool = False

    def __post_init__(self):
        _seed(self.seed, "split.seed")
        for key in ("test_fraction", "val_fraction"):
            value = getattr(self, key)
            _check(0 < value < 1, f"split.{key}", "in (0, 1)", value)


SWITCH_LEVELS = ("off", "on")  # the choices of a switch group: conf/<group>/off.yaml and on.yaml


@dataclass
class SwitchConfig:
    """A factor group that is off or on. ``name`` is the level (its Hydra choice), and ``enabled``
    is read from it, never set: a run labelled "on" cannot have run "off"."""

    GROUP: ClassVar[str]  # the config group, for error messages
    name: str = "off"

    def __post_init__(self):
        _one_of(self.name, SWITCH_LEVELS, f"{self.GROUP}.name")

    @property
    def enabled(self) -> bool:
        return self.name == "on"


@dataclass
class ClassWeightsConfig(SwitchConfig):
    GROUP: ClassVar[str] = "class_weights"
    weights: Any = None  # on: inverse_frequency | one non-negative number per class; off: null

    def __post_init__(self):
        super().__post_init__()
        # A weighted loss labelled "off" (or an unweighted one labelled "on") is refused.
        if not self.enabled:
            _check(self.weights is None, "class_weights.weights", "null with class_weights=off "
                   "(class_weights=on weights the loss)", self.weights)
            return
        if self.weights == "inverse_frequency":
            return
        values = list(self.weights) if isinstance(self.weights, list | tuple) else None
        ok = values is not None and len(values) == len(CLASSES) and all(
            isinstance(v, int | float) and v >= 0 for v in values)
        _check(ok, "class_weights.weights", f"inverse_frequency or {len(CLASSES)} non-negative numbers "
               f"in the order {', '.join(CLASSES)} with class_weights=on", self.weights)


@dataclass
class ClassBalanceConfig:
    name: str = "natural"
    max_per_class: Optional[int] = None  # noqa: UP045  (cap only)

    def __post_init__(self):
        _one_of(self.name, BALANCE_POLICIES, "class_balance.name")
        if self.name == "cap":
            _check(self.max_per_class is not None and self.max_per_class >= 1, "class_balance.max_per_class",
                   "a positive integer for cap", self.max_per_class)


@dataclass
class NormalizationConfig(SwitchConfig):
    GROUP: ClassVar[str] = "normalization"
    name: str = "on"


@dataclass
class AugmentationConfig(SwitchConfig):
    """The study's Keras augmentation: RandomRotation(0.1), RandomZoom(0.1), RandomTranslation(0.1)."""

    GROUP: ClassVar[str] = "augmentation"
    name: str = "on"
    rotation_turns: float = 0.1  # up to +-0.1 of a full turn
    zoom: float = 0.1  # scale in [1 - zoom, 1 + zoom]
    translate: float = 0.1  # up to +-10 % of the side
    fill: float = 0.0  # value of pixels that come from outside the image

    def __post_init__(self):
        super().__post_init__()
        for key in ("rotation_turns", "zoom", "translate"):
            value = getattr(self, key)
            _check(0 <= value < 1, f"augmentation.{key}", "in [0, 1)", value)


@dataclass
class BrisqueFilterConfig(SwitchConfig):
    GROUP: ClassVar[str] = "brisque_filter"
    fences: str = "both"
    iqr_factor: float = 1.5

    def __post_init__(self):
        super().__post_init__()
        _one_of(self.fences, FENCES, "brisque_filter.fences")
        _check(self.iqr_factor > 0, "brisque_filter.iqr_factor", "> 0", self.iqr_factor)


@dataclass
class BackboneConfig:
    name: str = "cnn16"
    pretrained: bool = False
    freeze: str = "none"  # none | all | last_n (train only the last `unfreeze_last` blocks)
    unfreeze_last: int = 0
    download: bool = False  # fetch a missing pretrained checkpoint (hash-verified) before building

    def __post_init__(self):
        _one_of(self.name, BACKBONES, "backbone.name")
        _one_of(self.freeze, FREEZE_MODES, "backbone.freeze")
        if self.name in SCRATCH_MODELS:
            _check(not self.pretrained and self.freeze == "none", "backbone.pretrained/freeze",
                   f"false/none for {self.name} (it has no pretrained weights)", (self.pretrained, self.freeze))
        _check(self.unfreeze_last >= 0, "backbone.unfreeze_last", ">= 0", self.unfreeze_last)

    @property
    def label(self) -> str:
        """The factor level, derived from what is built, never set: the architecture, then how its
        weights start and train where that differs from its usual regime (scratch models train from
        random weights; the others start from ImageNet's, frozen): ``_scratch`` random weights,
        ``_ft`` the last block trained (the study's resnet50_ft), ``_ft<k>`` the last k blocks,
        ``_ftall`` every block. So backbone=<choice> is labelled <choice>."""
        if self.name in SCRATCH_MODELS:
            return self.name
        start = "" if self.pretrained else "_scratch"
        trained = {"all": "", "none": "_ftall"}.get(self.freeze)
        if trained is None:  # last_n
            trained = "_ft" if self.unfreeze_last == 1 else f"_ft{self.unfreeze_last}"
        return self.name + start + trained


@dataclass
class TrainerConfig:
    epochs: int = 15
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    lr_schedule: str = "none"
    lr_step_epochs: int = 5
    lr_gamma: float = 0.1
    early_stopping_patience: Optional[int] = None  # noqa: UP045
    amp: bool = True
    deterministic: bool = False
    checkpoint_every: int = 0  # epochs between checkpoints on disk; 0 = only when a signal stops the run

    def __post_init__(self):
        _check(self.epochs >= 1, "trainer.epochs", "at least 1", self.epochs)
        _check(self.batch_size >= 1, "trainer.batch_size", "at least 1", self.batch_size)
        _check(self.lr > 0, "trainer.lr", "> 0", self.lr)
        _check(self.weight_decay >= 0, "trainer.weight_decay", ">= 0", self.weight_decay)
        _check(0 <= self.momentum < 1, "trainer.momentum", "in [0, 1)", self.momentum)
        _one_of(self.optimizer, OPTIMIZERS, "trainer.optimizer")
        _one_of(self.lr_schedule, SCHEDULES, "trainer.lr_schedule")
        _check(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0), "trainer.nesterov",
               "false unless trainer.optimizer=sgd and trainer.momentum > 0", self.nesterov)
        _check(self.lr_step_epochs >= 1, "trainer.lr_step_epochs", "at least 1", self.lr_step_epochs)
        _check(0 < self.lr_gamma <= 1, "trainer.lr_gamma", "in (0, 1]", self.lr_gamma)
        _check(self.early_stopping_patience is None or self.early_stopping_patience >= 1,
               "trainer.early_stopping_patience", "null or at least 1", self.early_stopping_patience)
        _check(self.checkpoint_every >= 0, "trainer.checkpoint_every", ">= 0", self.checkpoint_every)


@dataclass
class TrackingConfig:
    uri: str = MISSING
    artifact_root: str = MISSING
    experiment: str = "xray-ablate"
    run_name: Optional[str] = None  # noqa: UP045  (null = built from the factors and the seed)
    system_metrics: bool = True
    log_checkpoint: bool = True
    log_figures: bool = True  # per-run confusion matrix and learning curves (PNG)

    def __post_init__(self):
        _check(bool(self.experiment.strip()), "tracking.experiment", "a name", self.experiment)


@dataclass
class QualityConfig:
    """BRISQUE scoring (see conf/quality/default.yaml for why these values)."""

    analysis_size: int = 512  # longer side in px after resizing
    kernel_size: int = 7
    kernel_sigma: float = 7 / 6
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 32
    report_dir: str = "reports/quality"

    def __post_init__(self):
        _check(self.analysis_size >= 32, "quality.analysis_size", "at least 32", self.analysis_size)
        _check(self.kernel_size >= 3 and self.kernel_size % 2 == 1, "quality.kernel_size", "odd and >= 3",
               self.kernel_size)
        _check(self.batch_size >= 1, "quality.batch_size", "at least 1", self.batch_size)
        _check(bool(re.fullmatch(QUALITY_DEVICE_PATTERN, self.device)), "quality.device", "auto, cpu, cuda or cuda:N",
               self.device)

    def analysis(self) -> dict:
        """The settings a score depends on (device and batching do not change it)."""
        return {"analysis_size": self.analysis_size, "kernel_size": self.kernel_size,
                "kernel_sigma": self.kernel_sigma}


@dataclass
class BootstrapConfig:
    n_resamples: int = 9999
    seed: int = 0

    def __post_init__(self):
        _seed(self.seed, "report.bootstrap.seed")


# The study's benchmark run, the report's default baseline.
STUDY_BASELINE = {"dataset": "masked", "class_weights": "off", "normalization": "on", "augmentation": "on",
                  "brisque_filter": "off", "backbone": "cnn16"}


@dataclass
class ReportConfig:
    sweep_id: Optional[str] = None  # noqa: UP045
    experiment_name: Optional[str] = None  # noqa: UP045
    name: Optional[str] = None  # noqa: UP045
    # factor -> level (null: any level); conf/report/default.yaml says how a report picks it
    baseline: dict[str, Optional[str]] = field(default_factory=lambda: dict(STUDY_BASELINE))  # noqa: UP045
    metric: str = "test_accuracy"
    alpha: float = 0.05
    power: float = 0.8
    detect: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    max_curves: int = 8
    log_to_mlflow: bool = True

    def __post_init__(self):
        _check(0 < self.alpha < 1, "report.alpha", "in (0, 1)", self.alpha)
        _check(0 < self.power < 1, "report.power", "in (0, 1)", self.power)
        _check(all(d > 0 for d in self.detect), "report.detect", "differences > 0 (pp)", list(self.detect))
        _check(self.max_curves >= 0, "report.max_curves", ">= 0", self.max_curves)
        _check(self.bootstrap.n_resamples >= 100, "report.bootstrap.n_resamples", "at least 100",
               self.bootstrap.n_resamples)


# The audit settings that change what it measures (batch_size does not; canary is its own run).
AUDIT_SETTINGS = ("images", "seed", "border", "layer", "methods")


@dataclass
class AuditConfig:
    enabled: bool = True  # audit when the dataset has Lung polygons
    images: int = 200  # test images audited (all when fewer)
    seed: int = 0  # which images: the same for every configuration and run seed
    border: float = 0.08  # width of the border band, as a share of the image side
    batch_size: int = 32
    layer: Optional[str] = None  # noqa: UP045  Grad-CAM's module; null: the deepest with 16 px maps
    canary: bool = False  # the sweep adds the canary run: the baseline on data with a planted shortcut
    methods: list[str] = field(default_factory=lambda: ["gradcam", "inputxgrad"])

    def __post_init__(self):
        _seed(self.seed, "audit.seed")
        _check(self.images >= 1, "audit.images", "at least 1", self.images)
        for method in self.methods:
            _one_of(method, tuple(ATTRIBUTION_METHODS), "audit.methods")
        _check("gradcam" in self.methods and len(set(self.methods)) == len(self.methods), "audit.methods",
               "a list with gradcam, each method once", list(self.methods))
        _check(0 < self.border < 0.5, "audit.border", "in (0, 0.5)", self.border)
        _check(self.batch_size >= 1, "audit.batch_size", "at least 1", self.batch_size)


@dataclass
class EvalSetConfig:
    """An external test set: every run evaluates its best state on all of its images."""

    name: str = MISSING  # metrics ext_<name>_<metric>: letters, digits, '-', '.'
    root: str = MISSING  # a Darwin export or an ImageFolder, preprocessed like dataset.root

    def __post_init__(self):
        _check(bool(re.fullmatch(r"[A-Za-z0-9.-]+", str(self.name))), "eval.sets[].name",
               "letters, digits, '-' or '.'", self.name)
        _check(bool(self.root), f"eval.sets[{self.name}].root", "a folder", self.root)


@dataclass
class EvalConfig:
    subgroups: list[str] = field(default_factory=list)  # attribute names: test metrics per level
    sets: list[EvalSetConfig] = field(default_factory=list)  # external test sets

    def __post_init__(self):
        names = [s.name for s in self.sets]
        _check(len(names) == len(set(names)), "eval.sets", "named uniquely", names)


@dataclass
class SweepConfig:
    report: bool = False  # build the report when the sweep ends
    design: Any = None  # experiments: named sweeper params (see experiments/study_phase2.yaml)
    slurm_poll_s: int = 60  # hydra/launcher=slurm: longest wait between two job-state polls
    until: str = "fixed"  # fixed: `repeats` seeds | resolved: add seeds until every claim has a verdict
    max_seeds: int = 8  # until=resolved: the most seeds a configuration gets
    delta: float = 2.0  # the smallest difference that matters, in points of report.metric (pp)

    def __post_init__(self):
        _check(self.slurm_poll_s >= 1, "sweep.slurm_poll_s", ">= 1", self.slurm_poll_s)
        _one_of(self.until, ("fixed", "resolved"), "sweep.until")
        _check(self.delta > 0, "sweep.delta", "> 0", self.delta)


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    class_weights: ClassWeightsConfig = field(default_factory=ClassWeightsConfig)
    class_balance: ClassBalanceConfig = field(default_factory=ClassBalanceConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    brisque_filter: BrisqueFilterConfig = field(default_factory=BrisqueFilterConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0
    image_size: int = 200
    device: str = "auto"  # auto = cuda > mps > cpu; or cuda, cuda:1, mps, cpu
    num_workers: int = 0  # processes for preprocessing and scoring; 0 = all cores
    cache_verify: str = "auto"  # how much of a cached array to hash on load: auto | full | sample
    experiment_name: str = "none"  # set by experiment= configs; tags every run
    threads: Optional[int] = None  # noqa: UP045  torch threads per job; null = default or cores / n_jobs
    repeats: int = 3  # seeds per configuration in a sweep, unless seed= is swept
    resume: bool = True  # skip a job whose (config, seed, dataset, split) already finished
    full_factorial: bool = False  # experiments with a one-at-a-time design: run the 2^k design instead

    def __post_init__(self):
        minimum = max(MIN_IMAGE_SIZE[self.backbone.name], MIN_PREPARED_SIZE)
        _check(self.image_size >= minimum, "image_size", f">= {minimum} for backbone {self.backbone.name}",
               self.image_size)
        _check(self.num_workers >= 0, "num_workers", ">= 0", self.num_workers)
        _seed(self.seed, "seed")
        _one_of(self.cache_verify, VERIFY_MODES, "cache_verify")
        _check(self.repeats >= 1, "repeats", "at least 1", self.repeats)
        if self.sweep.until == "resolved":
            _check(self.repeats >= 2, "repeats", "at least 2 with sweep.until=resolved (a first look needs a spread)",
                   self.repeats)
            _one_of(self.report.metric, [f"test_{m}" for m in IMAGE_METRICS], "report.metric (sweep.until=resolved)")
            _check(self.sweep.max_seeds >= self.repeats, "sweep.max_seeds", f">= repeats ({self.repeats})",
                   self.sweep.max_seeds)
        _check(self.threads is None or self.threads >= 1, "threads", "null or at least 1", self.threads)
        _check(bool(re.fullmatch(DEVICE_PATTERN, self.device)), "device", "auto, cpu, cuda, cuda:N or mps",
               self.device)


ConfigStore.instance().store(name="config_schema", node=Config)
