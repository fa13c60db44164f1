"""The names a config may choose, per setting, and the smallest image each backbone takes.

The schema validates against these; each registry that maps a name to behaviour (backbones,
optimizers, schedules) checks at import that its keys are exactly these (``check_registry``).
No project imports: the bottom of ``config/``, so the schema loads without torch or the data code.
"""

from __future__ import annotations

from collections.abc import Iterable

# The classes, in the order that fixes each one's integer label everywhere (models, metrics, reports);
# data/labels maps Darwin tags to them.
CLASSES: tuple[str, ...] = ("bacterial", "viral", "covid", "healthy")
SCRATCH_MODELS = ("cnn16", "cnn16_gap")
PRETRAINED_BACKBONES = ("vgg16", "vgg19", "resnet50", "inception_v3", "xception")
BACKBONES = SCRATCH_MODELS + PRETRAINED_BACKBONES
# The smallest input each backbone takes: cnn16 halves the side six times (cnn16_gap rounds up);
# Inception and Xception have unpadded stems. models/ checks cnn16's against its pooling layers.
MIN_IMAGE_SIZE = {"cnn16": 64, "cnn16_gap": 1, "vgg16": 32, "vgg19": 32, "resnet50": 32, "inception_v3": 75,
                  "xception": 71}
MIN_PREPARED_SIZE = 8  # the smallest side data/masks prepares an image at, whatever the backbone
FREEZE_MODES = ("none", "all", "last_n")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")
BALANCE_POLICIES = ("natural", "undersample", "oversample", "cap")
FENCES = ("both", "upper")  # BRISQUE outlier fences
VERIFY_MODES = ("auto", "full", "sample")  # how much of each cached array is hashed
# What `device` and `quality.device` accept (the BRISQUE scorer has no MPS path): torch would take
# "cuda:x" or "gpu" only to fail at the first job.
DEVICE_PATTERN = r"auto|(cpu|mps|cuda)(:\d+)?"
QUALITY_DEVICE_PATTERN = r"auto|(cpu|cuda)(:\d+)?"
# The saliency audit's methods (audit.methods; audit.run computes them): name -> label; the name
# ends every per-method metric and column (audit_outside_lung_gradcam ...).
ATTRIBUTION_METHODS = {"gradcam": "Grad-CAM", "inputxgrad": "input × gradient", "intgrad": "integrated gradients"}


def check_registry(what: str, keys: Iterable[str], names: tuple[str, ...]) -> None:
    """A registry whose keys differ from the names a config may choose is a bug: say which."""
    keys = tuple(keys)
    if keys != names:
        raise RuntimeError(f"{what}: registry keys {keys} differ from config.choices {names}")
