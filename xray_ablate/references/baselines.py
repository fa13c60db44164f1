"""Trivial baselines and the source probe as pure functions of labels, attributes and pixels.

Every figure is a test-set accuracy with a Wilson interval; ties between classes (or levels)
go to the one listed first (CLASSES order for classes, sorted order for levels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xray_ablate.config.choices import CLASSES
from xray_ablate.evaluation import majority
from xray_ablate.references.intervals import Proportion
from xray_ablate.references.pixels import fit_pixel_model

# How a report names what the pixel model saw, per dataset variant.
VARIANT_PHRASES = {"raw": "the raw images", "masked": "the masked lungs"}


@dataclass
class Reference:
    """One reference row: what a trivial model achieves on the test split."""

    name: str  # majority | pixel_logreg | attribute_rule
    test: Proportion
    attribute: str | None = None
    detail: dict = field(default_factory=dict)


@dataclass
class Probe:
    """How well the pixels reveal an attribute, against predicting its majority level."""

    attribute: str
    test: Proportion
    majority: Proportion
    variant: str = ""
    detail: dict = field(default_factory=dict)
    hits: np.ndarray | None = field(default=None, repr=False, compare=False)  # per test image; not cached


def majority_class(cls_train: np.ndarray, cls_test: np.ndarray) -> Reference:
    predicted = majority(cls_train, CLASSES)
    return Reference("majority", Proportion.of(cls_test == predicted), detail={"predicts": predicted})


def attribute_rule(attribute: str, cls_train: np.ndarray, level_train: np.ndarray, cls_test: np.ndarray,
                   level_test: np.ndarray) -> Reference:
    """Predict the training set's most common class of the image's attribute level (a level
    absent from training: the overall majority class)."""
    fallback = majority(cls_train, CLASSES)
    rule = {str(lv): majority(cls_train[level_train == lv], CLASSES) for lv in sorted(set(level_train))}
    predicted = np.array([rule.get(lv, fallback) for lv in level_test])
    return Reference("attribute_rule", Proportion.of(predicted == cls_test), attribute=attribute,
                     detail={"rule": rule, "fallback": fallback})


def pixel_logreg(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """Per test image, whether the pixel model fitted on ``x['train']`` (C chosen on ``x['val']``)
    is right."""
    fit = fit_pixel_model(x["train"], y["train"], x["val"], y["val"])
    return fit.model.predict(x["test"]) == y["test"], {"C": fit.c, "val_accuracy": fit.val_accuracy}


def pixel_reference(x: dict[str, np.ndarray], cls: dict[str, np.ndarray]) -> Reference:
    hits, detail = pixel_logreg(x, cls)
    return Reference("pixel_logreg", Proportion.of(hits), detail=detail)


def source_probe(attribute: str, x: dict[str, np.ndarray], levels: dict[str, np.ndarray],
                 variant: str = "") -> Probe | None:
    """The pixel model predicting the attribute; None when training holds a single level."""
    train_levels = sorted(set(levels["train"]))
    if len(train_levels) < 2:
        return None
    hits, detail = pixel_logreg(x, levels)
    majority_level = str(majority(levels["train"], train_levels))
    return Probe(attribute, Proportion.of(hits), Proportion.of(levels["test"] == majority_level), variant,
                 {**detail, "majority_level": majority_level}, hits)


def probe_sentence(probes: list[Probe]) -> str:
    """'the raw images reveal source at 97 % (majority 63 %); the masked lungs at 86 %' for the
    probes of one attribute, in the order given (the majority is repeated only where it differs)."""
    if not probes:
        return ""
    first = probes[0]
    parts = [f"{_phrase(first.variant)} reveal {first.attribute} at {_pct(first.test.rate)} "
             f"(majority {_pct(first.majority.rate)})"]
    for probe in probes[1:]:
        same = probe.majority.rate == first.majority.rate
        parts.append(f"{_phrase(probe.variant)} at {_pct(probe.test.rate)}"
                     + ("" if same else f" (majority {_pct(probe.majority.rate)})"))
    return "; ".join(parts)


def _phrase(variant: str) -> str:
    base, _, which = variant.partition("-")  # 'masked-32px': one of a sweep's datasets of a variant
    phrase = VARIANT_PHRASES.get(base, f"the {base} images" if base else "the images")
    return f"{phrase} ({which})" if which else phrase


def _pct(rate: float) -> str:
    return f"{100 * rate:.0f} %"
