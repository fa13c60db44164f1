"""Confounds in the report: the references a result must beat (trivial baselines, the source
probe, from the sweep's parent run), accuracy per subgroup (the runs' subgroup_* metrics, and
predictions.csv for the interval over seeds and test images) and on external test sets per
configuration (the runs' ext_* metrics)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd

from xray_ablate.evaluation import CONFIDENCE
from xray_ablate.references import MIN_SUBGROUP_N, References, probe_sentence, wilson
from xray_ablate.report.images import Evidence
from xray_ablate.report.render.blocks import Block, Heading, Table, Text
from xray_ablate.report.render.tables import fmt, fmt_ci, metric_title
from xray_ablate.report.runs import PREDICTION_COLUMNS
from xray_ablate.stats import intervals
from xray_ablate.tracking import schema
from xray_ablate.tracking.names import safe_level, safe_name
from xray_ablate.tracking.reader import json_artifacts

VARIANT_ORDER = ("raw", "masked")  # the probe sentence's order
EXTERNAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr")
REFERENCE_ORDER = ("majority", "attribute_rule", "pixel_logreg")  # rows in this order, then by variant
SMALL = "†"  # marks a level with fewer than MIN_SUBGROUP_N test images


@dataclass
class Confounds:
    references: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per reference model
    probes: list[str] = field(default_factory=list)  # one sentence per attribute
    subgroups: pd.DataFrame = field(default_factory=pd.DataFrame)  # config x attribute x level
    external: pd.DataFrame = field(default_factory=pd.DataFrame)  # config x external set


def confounds(parent_run_id: str | None, runs: pd.DataFrame, labels: dict[str, str],
              predictions: dict[str, pd.DataFrame], confidence: float = 0.95) -> Confounds:
    """Everything this module shows; ``labels``: config key -> configuration label, in the run
    table's order; ``predictions``: run id -> predictions.csv (the attribute levels' names and
    the per-image correctness of the subgroup intervals)."""
    docs = list(json_artifacts(parent_run_id, schema.REFERENCES_DIR).values()) if parent_run_id else []
    refs = [References.from_dict(d, d.get("variant", "")) for d in docs]
    attributes = sorted({r.attribute for x in refs for r in x.rows if r.attribute}
                        | {c for p in predictions.values() for c in p.columns if c not in PREDICTION_COLUMNS})
    return Confounds(reference_rows(refs), probe_sentences(refs),
                     subgroup_table(runs, labels, attributes, level_names(predictions), predictions, confidence),
                     external_table(runs, labels))


def reference_rows(refs: list[References]) -> pd.DataFrame:
    """Test accuracy (%) with its Wilson interval of each trivial model; a row that every variant
    shares (majority class, attribute rules on one split) once."""
    rows = []
    for x in sorted(refs, key=_variant_rank):
        for r in x.rows:
            if r.name == "majority":
                what = f"majority class (always {r.detail.get('predicts', '?')})"
            elif r.name == "pixel_logreg":
                what = f"pixel logistic regression, {x.variant or 'images'} (C = {r.detail['C']:g})"
            else:
                what = f"{r.attribute} only (the training set's most common class per level)"
            low, high = r.test.interval
            rows.append({"rank": REFERENCE_ORDER.index(r.name), "reference": what, "k": r.test.k, "n": r.test.n,
                         "accuracy": 100 * r.test.rate, "ci_low": 100 * low, "ci_high": 100 * high})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).drop_duplicates()
    return frame.sort_values("rank", kind="stable").drop(columns="rank").reset_index(drop=True)


def trained_reference_rows(c: Confounds) -> pd.DataFrame:
    """The references trained on the split (attribute rules, the pixel models) as rows of the run
    table and lines of its plots: their test accuracy, and a note with the Wilson interval over the
    test images (one model each: no seeds to vary). The majority class is the run table's own row."""
    frame = c.references
    if frame.empty:
        return pd.DataFrame()
    frame = frame[~frame["reference"].str.startswith("majority class")]
    return pd.DataFrame({"config": "reference: " + frame["reference"], "test_accuracy": frame["accuracy"] / 100,
                         "wilson_low": frame["ci_low"] / 100, "wilson_high": frame["ci_high"] / 100,
                         "note": [f"one model; {CONFIDENCE:.0%} CI {fmt_ci(lo, hi)} (Wilson, {n} test images)"
                                  for lo, hi, n in zip(frame["ci_low"], frame["ci_high"], frame["n"], strict=True)]})


def probe_sentences(refs: list[References]) -> list[str]:
    """'the raw images reveal source at 97 % (majority 63 %); the masked lungs at 86 %', per attribute."""
    by_attribute = defaultdict(list)
    for x in sorted(refs, key=_variant_rank):
        for probe in x.probes:
            by_attribute[probe.attribute].append(probe)
    return [probe_sentence(probes) for _, probes in sorted(by_attribute.items())]


def level_names(predictions: dict[str, pd.DataFrame]) -> dict[tuple[str, str], str]:
    """(attribute, level as in a metric name) -> the level as in the data ('cohen_v7json-dc119921'
    -> 'cohen+v7json'), from the attribute columns of predictions.csv. Runs logged before
    2026-12-07 named a level by safe_name alone ('cohen_v7json'): read too, where no level of
    today has that name."""
    levels = {(column, level) for frame in predictions.values()
              for column in frame.columns.difference(list(PREDICTION_COLUMNS))
              for level in frame[column].dropna().astype(str).unique()}
    # sorted: of old levels that sanitised alike, the last one's value is what the run logged
    return ({(column, safe_name(level)): level for column, level in sorted(levels)}
            | {(column, safe_level(level)): level for column, level in levels})


def subgroup_table(runs: pd.DataFrame, labels: dict[str, str], attributes: list[str],
                   names: dict[tuple[str, str], str], predictions: dict[str, pd.DataFrame] | None = None,
                   confidence: float = 0.95) -> pd.DataFrame:
    """Per configuration, attribute and level: test images per run, accuracy (%) averaged over
    seeds with its interval, and the gap (highest - lowest accuracy over levels with enough
    images) averaged over seeds. The interval is that of the run table, over seeds and the level's
    test images (intervals.total_interval), where 2 or more seeds have predictions.csv with the
    attribute; else Wilson's over the level's images at the mean accuracy (``interval`` says which)."""
    rows = []
    for attribute in attributes:
        prefix = f"subgroup_{safe_name(attribute)}_"
        # another attribute's metrics share the prefix when its name extends this one's (source,
        # source_repo): theirs are not this attribute's levels
        others = tuple(p for p in (f"subgroup_{safe_name(b)}_" for b in attributes)
                       if p != prefix and p.startswith(prefix))
        # a level's metric name, by the level as in the data: runs logged before and after
        # 2026-12-07 name one level two ways (safe_name, safe_level), and a report can hold both
        logged_as = defaultdict(list)
        for column in runs.columns:
            if column.startswith(prefix) and column.endswith("_n") and not column.startswith(others):
                level = column[len(prefix):-2]
                logged_as[names.get((attribute, level), level)].append(level)
        for key, label in labels.items():
            sub = runs[runs["config_key"] == key]
            gap = sub.get(f"{prefix}gap", pd.Series(dtype=float)).mean()
            for shown, variants in sorted(logged_as.items()):
                acc, n = (_first_logged(sub, [f"{prefix}{v}_{what}" for v in variants]) for what in ("accuracy", "n"))
                if n.empty:
                    continue
                mean, images = float(acc.mean()), int(round(n.mean()))
                scores = level_scores(sub, predictions or {}, attribute, shown)
                if scores is not None and len(scores) >= 2:
                    total = intervals.total_interval(scores, confidence)
                    low, high, covers = total.low, total.high, SEEDS_AND_IMAGES
                else:
                    low, high = wilson(int(round(mean * images)), images)
                    covers = IMAGES_ONLY
                rows.append({"config": label, "attribute": attribute, "level": shown, "n": images,
                             "small": images < MIN_SUBGROUP_N, "seeds": len(acc), "accuracy": 100 * mean,
                             "ci_low": 100 * low, "ci_high": 100 * high, "interval": covers, "gap": 100 * gap})
    return pd.DataFrame(rows)


SEEDS_AND_IMAGES, IMAGES_ONLY = "seeds + test images", "Wilson, test images only"


def _first_logged(runs: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Per run, the first of ``columns`` it logged (one level under its names of two code versions)."""
    return runs[columns].bfill(axis=1).iloc[:, 0].dropna()


def level_scores(runs: pd.DataFrame, predictions: dict[str, pd.DataFrame], attribute: str,
                 level: str) -> pd.DataFrame | None:
    """Seeds x image ids of 0/1 correctness on the test images whose ``attribute`` is ``level``
    (Evidence.scores on those rows); None when a run lacks predictions.csv or the attribute column."""
    if not all(run_id in predictions and attribute in predictions[run_id] for run_id in runs["run_id"]):
        return None
    at_level = {run_id: predictions[run_id][predictions[run_id][attribute].astype(str) == level]
                for run_id in runs["run_id"]}
    return Evidence(at_level).scores(runs, runs["config_key"].iloc[0], "test_accuracy", 1.0)


def external_table(runs: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Per configuration and external set: images, the metrics (%) averaged over seeds, and the
    test split's accuracy beside them."""
    sets = sorted(c[len("ext_"):-len("_n")] for c in runs.columns if c.startswith("ext_") and c.endswith("_n"))
    rows = []
    for key, label in labels.items():
        sub = runs[runs["config_key"] == key]
        for name in sets:
            n = sub[f"ext_{name}_n"].dropna()
            if n.empty:
                continue
            row = {"config": label, "set": name, "n": int(round(n.mean())), "seeds": len(n),
                   "test_accuracy": 100 * sub["test_accuracy"].mean()}
            row |= {m: 100 * sub.get(f"ext_{name}_{m}", pd.Series(dtype=float)).mean() for m in EXTERNAL_METRICS}
            rows.append(row)
    return pd.DataFrame(rows)


def display_references(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Reference": frame["reference"], "Test accuracy (%)": frame["accuracy"].map(fmt),
        "95% CI (Wilson)": [fmt_ci(lo, hi) for lo, hi in zip(frame["ci_low"], frame["ci_high"], strict=True)],
        "Correct / images": [f"{k} / {n}" for k, n in zip(frame["k"], frame["n"], strict=True)]})


def display_subgroups(frame: pd.DataFrame, with_config: bool = True) -> pd.DataFrame:
    shown = pd.DataFrame({
        "Configuration": frame["config"], "Attribute": frame["attribute"], "Level": frame["level"],
        "Test images": [f"{n}{SMALL if s else ''}" for n, s in zip(frame["n"], frame["small"], strict=True)],
        "Accuracy (%)": frame["accuracy"].map(fmt),
        "95% CI": [fmt_ci(lo, hi, percent=True) for lo, hi in zip(frame["ci_low"], frame["ci_high"], strict=True)],
        "CI over": frame["interval"], "Gap (pp)": frame["gap"].map(fmt), "Seeds": frame["seeds"].astype(str)})
    return shown if with_config else shown.drop(columns=["Configuration", "Gap (pp)"])


def display_external(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"Configuration": frame["config"], "External set": frame["set"],
                         "Images": frame["n"].astype(str), "Seeds": frame["seeds"].astype(str),
                         **{f"{metric_title(m).capitalize()} (%)": frame[m].map(fmt) for m in EXTERNAL_METRICS},
                         "Test split accuracy (%)": frame["test_accuracy"].map(fmt)})


def table_frames(c: Confounds | None) -> dict[str, tuple[str, pd.DataFrame, pd.DataFrame]]:
    """Report title -> (file stem, numeric table, display table) of the non-empty tables."""
    if c is None:
        return {}
    tables = {"References a result must beat": ("trivial_baselines", c.references, display_references),
              "Subgroups": ("subgroups", c.subgroups, display_subgroups),
              "External test sets": ("external_sets", c.external, display_external)}
    return {title: (stem, frame, show(frame)) for title, (stem, frame, show) in tables.items() if not frame.empty}


def references_section(c: Confounds | None) -> list[Block]:
    """The 'References a result must beat' section; empty without references."""
    if c is None or (c.references.empty and not c.probes):
        return []
    out = [Heading("References a result must beat"),
           Text("What trivial models reach on the same test split (Wilson 95 % CI over its images); a "
                  "configuration that does not beat them has not shown it learned the disease.")]
    if not c.references.empty:
        out.append(Table(display_references(c.references)))
    out += [Text(f"**Source probe:** {s} (the same pixel model trained to predict the attribute "
                   "instead of the class; well above the majority rate, the images carry it, and a "
                   "classifier can use it as a shortcut).") for s in c.probes]
    return out


def subgroups_section(c: Confounds | None) -> list[Block]:
    """Per-subgroup and external-set sections."""
    if c is None:
        return []
    out: list[Block] = []
    if not c.subgroups.empty:
        out += [Heading("Subgroups"),
                Text(f"Test accuracy per attribute level, mean over seeds, with its 95 % CI over seeds and "
                       f"the level's test images, as in the run table (with one seed, or without "
                       f"predictions.csv: Wilson's over the level's test images only, as the CI-over column says). "
                       f"{SMALL}: fewer than {MIN_SUBGROUP_N} test images, shown but left out of the gap "
                       "(highest − lowest level accuracy, pp, mean over seeds).")]
        for config, frame in c.subgroups.groupby("config", sort=False):
            gaps = frame.drop_duplicates("attribute")
            out += [Heading(config, 3), Table(display_subgroups(frame, with_config=False)),
                    Text("Gap: " + "; ".join(f"{a} {fmt(g)} pp" for a, g in zip(
                        gaps["attribute"], gaps["gap"], strict=True)) + ".")]
    if not c.external.empty:
        out += [Heading("External test sets"),
                Text("Each run's best state on every image of each external set (eval.sets), "
                       "preprocessed like the training data; mean over seeds. Far below the test split's "
                       "accuracy, the model learned something specific to the training data's sources."),
                Table(display_external(c.external))]
    return out


def _variant_rank(refs: References) -> tuple[int, float, str]:
    """raw before masked; a variant's datasets by image size ('masked-32px' before 'masked-128px')."""
    base, _, rest = refs.variant.partition("-")
    size = float(rest[:-2]) if re.fullmatch(r"\d+px", rest) else math.inf
    return VARIANT_ORDER.index(base) if base in VARIANT_ORDER else len(VARIANT_ORDER), size, rest
