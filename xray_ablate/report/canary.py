"""The positive control (audit.canary=true): did the shortcut checks see the canary's planted marker?

The canary run (xray.kind=canary) is the baseline configuration trained on data whose training
images of one class carry a white square outside the lungs, and half of whose test images carry
it whatever their class (data/canary.py). Each shortcut check must find it there:
- the saliency audit, per method: the marker's box is a hot spot (mean attribution at least
  canary.HOTSPOT_RATIO x the map's) in at least HOTSPOT_SHARE of the audited test images that carry it;
- the source probe on the model's features and the pixel reference's model as a probe: which
  test images carry the marker, read more accurately than by guessing the training split's most
  common level (the Wilson interval's lower end above that rate). On the test split the marker
  is independent of the class, so a model that learned only the class reads it at chance.
A check that misses it cannot be trusted to see a real shortcut in this data: the report says so
first thing, and an audit method that missed it is never shown first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from xray_ablate.data import canary
from xray_ablate.evaluation import wilson
from xray_ablate.report.images import METHOD_LABELS
from xray_ablate.report.render.blocks import Block, Heading, Table, Text

HOTSPOT_SHARE = 0.5  # of the audited images carrying the marker
PROBES = {"probe": "source probe on the model's features", "pixel_probe": "pixel reference (32 px) as a probe"}


@dataclass(frozen=True)
class CanaryCheck:
    check: str  # what looked, in words
    method: str | None  # the audit method, for the audit's checks
    found: str  # what it found, in words
    bar: str  # what counts as seeing the marker, in words
    detected: bool


@dataclass
class CanaryResult:
    run_id: str | None  # the finished canary run; None: it did not finish
    checks: list[CanaryCheck]

    @property
    def missed(self) -> list[CanaryCheck]:
        return [c for c in self.checks if not c.detected]

    @property
    def missed_methods(self) -> set[str]:
        """The audit methods that did not find the marker (shown last, called uninformative)."""
        return {c.method for c in self.missed if c.method}


def canary_result(runs: pd.DataFrame, requested: bool) -> CanaryResult | None:
    """From the sweep's canary runs (tidy, any status; the newest finished one is read); None when
    none was asked for or run."""
    finished = runs[runs["status"] == "FINISHED"] if len(runs) else runs
    if finished.empty:
        return CanaryResult(None, []) if requested or len(runs) else None
    run = finished.sort_values("start_time").iloc[-1]
    return CanaryResult(str(run["run_id"]), canary_checks(run))


def canary_checks(run: pd.Series) -> list[CanaryCheck]:
    """Each check on the canary run's metrics (audit_hotspot_Canary_<method>, probe_Canary_*,
    pixel_probe_Canary_*); a check whose figure the run lacks did not see the marker."""
    checks = []
    audited = [m for m in METHOD_LABELS if not math.isnan(_metric(run, f"audit_outside_lung_{m}"))
               or not math.isnan(_metric(run, f"audit_hotspot_{canary.ATTRIBUTE}_{m}"))]
    for method in audited or ["gradcam"]:  # no audit at all: Grad-CAM, always audited, missed it
        label = METHOD_LABELS[method]
        rate = _metric(run, f"audit_hotspot_{canary.ATTRIBUTE}_{method}")
        found = "no map of a marked image" if math.isnan(rate) else f"a hot spot in {rate:.0%} of the marked images"
        checks.append(CanaryCheck(f"saliency audit, {label}", method, found,
                                  f"≥ {HOTSPOT_SHARE:.0%} (box mean ≥ {canary.HOTSPOT_RATIO:g}× the map's)",
                                  rate >= HOTSPOT_SHARE))
    for prefix, label in PROBES.items():
        name = f"{prefix}_{canary.ATTRIBUTE}"
        accuracy, majority, n = (_metric(run, f"{name}_{k}") for k in ("accuracy", "majority", "n"))
        if math.isnan(accuracy) or math.isnan(n):
            checks.append(CanaryCheck(label, None, "not computed", "above the majority rule", False))
            continue
        low, high = wilson(round(accuracy * n), int(n))
        checks.append(CanaryCheck(label, None, f"{accuracy:.0%} [{low:.0%}, {high:.0%}] of {int(n)} test images",
                                  f"above {majority:.0%} (the majority rule)", low > majority))
    return checks


def _metric(run: pd.Series, name: str) -> float:
    value = run.get(name)
    return float(value) if value is not None and pd.notna(value) else math.nan


def canary_warning(result: CanaryResult | None) -> str | None:
    """The report's first warning when the positive control failed or did not run."""
    if result is None:
        return None
    if result.run_id is None:
        return ("the canary run (audit.canary=true) did not finish, so nothing shows that the shortcut "
                "checks can see a planted shortcut in this data.")
    if not result.missed:
        return None
    names = "; ".join(f"{c.check} ({c.found})" for c in result.missed)
    return (f"the shortcut checks could not see a planted shortcut: in the canary run, {names} did not find "
            "the marker planted outside the lungs, so they cannot be trusted for this data (see 'Positive "
            "control').")


def canary_tag(result: CanaryResult) -> str:
    """The parent run's tag: "found by all 4 checks", "missed by: ..." or "did not finish"."""
    if result.run_id is None:
        return "did not finish"
    if result.missed:
        return "missed by: " + "; ".join(c.check for c in result.missed)
    return f"found by all {len(result.checks)} checks"


def canary_section(result: CanaryResult | None) -> list[Block]:
    if result is None:
        return []
    out = [Heading("Positive control (canary run)")]
    if result.run_id is None:
        return out + [Text("The canary run did not finish: no check was tested against a planted shortcut.")]
    table = pd.DataFrame({"check": [c.check for c in result.checks], "found": [c.found for c in result.checks],
                          "sees the marker when": [c.bar for c in result.checks],
                          "verdict": ["found it" if c.detected else "**missed it**" for c in result.checks]})
    return out + [
        Text(f"Run `{result.run_id}`: the baseline configuration trained on a copy of the data where every "
             f"training and validation image of class {canary.CANARY_CLASS} carries a white square outside "
             f"the lungs and no other does; on the test split a hash-chosen {canary.TEST_RATE:.0%} of the "
             "images carry it, whatever their class, so reading it there is reading the marker, not the "
             "class. It is in no other table. Intervals: 95 % Wilson over the test images."),
        Table(table)]
