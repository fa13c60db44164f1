"""Training-set size and class balance in the report: the learning curve over training images and
per-class recall next to accuracy and balanced accuracy.

Pure builders over the tidy run frame (runs.py) and the run table (tables.run_table); the figure is
the only I/O. Intervals are those of the run table: over seeds + test images where every run of a
configuration has predictions.csv (intervals.total_interval), else the t-interval over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xray_ablate.config.choices import CLASSES
from xray_ablate.config.factors import factor_labels, factor_names
from xray_ablate.report.images import Evidence
from xray_ablate.report.render import plots
from xray_ablate.report.render.blocks import Block, Figure, Heading, Table, Text
from xray_ablate.report.render.tables import fmt, fmt_ci, is_fraction, metric_title
from xray_ablate.report.tables import Settings
from xray_ablate.stats import intervals

FRACTION = "train_fraction"
BALANCE_FACTORS = ("class_weights", "class_balance")
FIGURE = "Learning curve (training-set size)"
LEARNING_TITLE = "Learning curve"
RECALL_TITLE = "Per-class recall"
# The columns of the per-class table: metric of the run frame -> shown name.
PER_CLASS = {"test_accuracy": "accuracy", "test_balanced_accuracy": "balanced accuracy",
             **{f"test_recall_{c}": f"recall {c}" for c in CLASSES}}
OVER_SEEDS, OVER_SEEDS_AND_IMAGES = "seeds", "seeds + test images"


@dataclass
class Curves:
    """The two tables, each None when its factors do not vary among the runs."""

    learning: pd.DataFrame | None = None  # learning_curve_table
    recall: pd.DataFrame | None = None  # per_class_table


def varied(runs: pd.DataFrame) -> list[str]:
    """The factors with more than one level among the runs, in factor-table order."""
    return [f for f in factor_names() if runs[f].nunique() > 1]


def curve_labels(table: pd.DataFrame, factors: list[str]) -> pd.Series:
    """Per run-table row, the levels of ``factors`` ("dataset=masked"); "all runs" without any."""
    if not factors:
        return pd.Series("all runs", index=table.index)
    return table[factors].astype(str).apply(
        lambda row: ", ".join(f"{f}={v}" for f, v in row.items()), axis=1)


def learning_curve_table(runs: pd.DataFrame, table: pd.DataFrame, settings: Settings
                         ) -> pd.DataFrame | None:
    """One row per configuration when train_fraction varies, else None: its curve (the levels of
    the other varied factors), the fraction, the training images (mean of the runs' n_train param
    over seeds; NaN when not logged), the seeds, and the metric's mean with its interval (over
    seeds + test images where known, else over seeds). Sorted by curve, then training images."""
    factors = varied(runs)
    if FRACTION not in factors:
        return None
    m = settings.metric
    counts = (runs.groupby("config_key")["n_train"].mean() if "n_train" in runs
              else pd.Series(dtype=float))
    total = table["ci_total_low"].notna() & table["ci_total_high"].notna()
    out = pd.DataFrame({
        "curve": curve_labels(table, [f for f in factors if f != FRACTION]),
        "config": table["config"], "config_key": table["config_key"],
        **{f: table[f] for f in factors if f != FRACTION},
        FRACTION: pd.to_numeric(table[FRACTION], errors="coerce"),
        "n_train": table["config_key"].map(counts).astype(float),
        "n": table["n"],
        f"{m}_mean": table[f"{m}_mean"],
        f"{m}_low": table["ci_total_low"].where(total, table[f"{m}_t_low"]),
        f"{m}_high": table["ci_total_high"].where(total, table[f"{m}_t_high"]),
        "interval": np.where(total, OVER_SEEDS_AND_IMAGES, OVER_SEEDS),
    })
    return out.sort_values(["curve", FRACTION, "n_train"]).reset_index(drop=True)


def _class_scores(runs: pd.DataFrame, key: str, evidence: Evidence) -> dict[str, pd.DataFrame] | None:
    """Per-image correctness (seeds x images, in %) of configuration ``key`` for each metric of
    PER_CLASS: accuracy, balanced accuracy, and for recall <class> the correctness on that class's
    images only; None when a run lacks predictions.csv."""
    correct = evidence.scores(runs, key, "test_accuracy", 100.0)
    if correct is None:
        return None
    labels = pd.concat([evidence.predictions[r].set_index("image_id")["label"]
                        for r in runs.loc[runs["config_key"] == key, "run_id"]])
    labels = labels[~labels.index.duplicated()].reindex(correct.columns)
    out = {"test_accuracy": correct,
           "test_balanced_accuracy": evidence.scores(runs, key, "test_balanced_accuracy", 100.0)}
    for i, c in enumerate(CLASSES):
        out[f"test_recall_{c}"] = correct.loc[:, (labels == i).to_numpy()]
    return out


def per_class_table(runs: pd.DataFrame, table: pd.DataFrame, settings: Settings,
                    evidence: Evidence | None = None) -> pd.DataFrame | None:
    """One row per configuration when class_weights or class_balance varies, else None: accuracy,
    balanced accuracy and each class's recall (%), each its mean over seeds with an interval over
    seeds + test images (from predictions.csv) or, without predictions, the t-interval over seeds
    of the logged test_* metrics. A class absent from the test set has NaN recall."""
    factors = varied(runs)
    if not set(BALANCE_FACTORS) & set(factors):
        return None
    conf = settings.confidence
    rows = []
    for cfg in table.itertuples():
        sub = runs[runs["config_key"] == cfg.config_key]
        scores = _class_scores(runs, cfg.config_key, evidence) if evidence else None
        row = {"config": cfg.config, "config_key": cfg.config_key,
               **{f: getattr(cfg, f) for f in factors}, "n": cfg.n,
               "interval": OVER_SEEDS if scores is None else OVER_SEEDS_AND_IMAGES}
        for metric in PER_CLASS:
            if scores is not None and scores[metric].shape[1]:
                ci = intervals.total_interval(scores[metric], conf)
                mean, low, high = ci.estimate, ci.low, ci.high
            else:
                values = (sub[metric] * 100).dropna() if metric in sub else pd.Series(dtype=float)
                mean = values.mean() if len(values) else np.nan
                low, high = intervals.t_interval(values, conf)
            row |= {f"{metric}_mean": mean, f"{metric}_low": low, f"{metric}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)


def trade_off(recall: pd.DataFrame) -> str:
    """The sentence under the per-class table: why accuracy and balanced accuracy can disagree,
    and which configurations lead on each here."""
    text = ("Rebalancing (class weights, under- or oversampling) trades one for the other: it moves "
            "recall from the large classes to the small ones, and accuracy weights each class by "
            "its share of the test set while balanced accuracy (the mean recall) weights the "
            "classes equally, so one can rise while the other falls.")
    acc, bal = recall["test_accuracy_mean"], recall["test_balanced_accuracy_mean"]
    if acc.isna().all() or bal.isna().all():
        return text
    a, b = recall.loc[acc.idxmax()], recall.loc[bal.idxmax()]
    both = "accuracy {:.1f} %, balanced accuracy {:.1f} %"
    if a["config_key"] == b["config_key"]:
        return (text + f" Here **{a['config']}** leads on both ("
                + both.format(a["test_accuracy_mean"], a["test_balanced_accuracy_mean"]) + ").")
    return (text + f" Here the highest accuracy is **{a['config']}**'s ("
            + both.format(a["test_accuracy_mean"], a["test_balanced_accuracy_mean"])
            + f"), the highest balanced accuracy **{b['config']}**'s ("
            + both.format(b["test_accuracy_mean"], b["test_balanced_accuracy_mean"])
            + "); compare the intervals before calling either a difference.")


def compute_curves(runs: pd.DataFrame, table: pd.DataFrame, settings: Settings,
           evidence: Evidence | None = None) -> Curves:
    return Curves(learning_curve_table(runs, table, settings),
                  per_class_table(runs, table, settings, evidence))


# --- display -------------------------------------------------------------------------------------

def _with_ci(frame: pd.DataFrame, metric: str, percent: bool = True) -> list[str]:
    return [fmt(v) + ("" if fmt_ci(lo, hi) == "–" else f" {fmt_ci(lo, hi, percent=percent)}")
            for v, lo, hi in
            zip(frame[f"{metric}_mean"], frame[f"{metric}_low"], frame[f"{metric}_high"], strict=True)]


def _factor_columns(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {factor_labels()[f]: frame[f] for f in factor_names() if f in frame}


def display_learning_curve(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    level = f"{settings.confidence:.0%}"
    return pd.DataFrame({
        "curve": frame["curve"], factor_labels()[FRACTION]: frame[FRACTION].map(lambda v: f"{v:g}"),
        "training images": frame["n_train"].map(lambda v: fmt(v, 0)), "n": frame["n"],
        f"{metric_title(settings.metric)}{' (%)' if settings.unit else ''} [{level} CI]":
            _with_ci(frame, settings.metric, is_fraction(settings.metric)),
        "CI over": frame["interval"]})


def display_per_class(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    level = f"{settings.confidence:.0%}"
    return pd.DataFrame({"config": frame["config"], **_factor_columns(frame), "n": frame["n"],
                         **{f"{name} (%) [{level} CI]": _with_ci(frame, metric)
                            for metric, name in PER_CLASS.items()},
                         "CI over": frame["interval"]})


def curve_frames(c: Curves, settings: Settings) -> dict[str, tuple[str, pd.DataFrame, pd.DataFrame]]:
    """The report's table files: title -> (file stem, numeric frame, shown frame)."""
    out = {}
    if c.learning is not None:
        out[LEARNING_TITLE] = ("learning_curve", c.learning, display_learning_curve(c.learning, settings))
    if c.recall is not None:
        out[RECALL_TITLE] = ("per_class_recall", c.recall, display_per_class(c.recall, settings))
    return out


def learning_curve_plot(frame: pd.DataFrame, settings: Settings, path: Path) -> Path:
    """The metric against training images (log-x; the fraction where n_train was not logged), one
    line per curve, mean with its interval (side by side: each curve is shifted a little)."""
    m, scale_x = settings.metric, "n_train" if frame["n_train"].notna().all() else FRACTION
    names = list(dict.fromkeys(frame["curve"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(names):
        sub = frame[frame["curve"] == name]
        x = sub[scale_x].to_numpy(float) * 2 ** (0.03 * (i - (len(names) - 1) / 2))
        y, low, high = (sub[f"{m}_{k}"].to_numpy(float) for k in ("mean", "low", "high"))
        ok = np.isfinite(low) & np.isfinite(high)
        ax.plot(x, y, "o-", color=f"C{i % 10}", label=name)
        ax.errorbar(x[ok], y[ok], yerr=[y[ok] - low[ok], high[ok] - y[ok]], fmt="none",
                    ecolor=f"C{i % 10}", capsize=3)
    ticks = np.unique(frame[scale_x].dropna().to_numpy(float))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(("training images" if scale_x == "n_train" else "training fraction") + " (log scale)")
    ax.set_ylabel(metric_title(m) + (" (%)" if settings.unit else ""))
    over = " / ".join(sorted(set(frame["interval"]), reverse=True))
    ax.set_title(f"{LEARNING_TITLE}: mean, {settings.confidence:.0%} CI over {over}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="x-small")
    return plots._save(fig, path)


def curve_section(c: Curves, settings: Settings, figures: dict[str, str]) -> list[Block]:
    """The learning-curve and per-class sections (empty when neither table applies)."""
    out: list[Block] = []
    level = f"{settings.confidence:.0%}"
    if c.learning is not None:
        curves_by = ", ".join(f for f in c.learning.columns if f in factor_names() and f != FRACTION)
        out += [Heading(FIGURE),
                Text(f"{metric_title(settings.metric)} against the number of training images "
                       f"(dataset.train_fraction of the training split, the runs' n_train), "
                       + (f"one curve per level of {curves_by}" if curves_by else "one curve")
                       + f"; mean over seeds with its {level} CI (column 'CI over').")]
        if FIGURE in figures:
            out.append(Figure(FIGURE, figures[FIGURE]))
        out.append(Table(display_learning_curve(c.learning, settings)))
    if c.recall is not None:
        out += [Heading("Per-class recall and balanced accuracy"), Text(trade_off(c.recall)),
                Table(display_per_class(c.recall, settings))]
    return out


