"""Per-image evidence: did each run learn, per-image score matrices, McNemar, variance split, references.

Built from the tidy run frame and each run's predictions.csv (runs.load_predictions); the
statistics are in stats/intervals.py, the "did it learn?" rule, the Wilson interval and the majority class
in evaluation.py (one place, shared with training).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xray_ablate.config.choices import ATTRIBUTION_METHODS, CLASSES
from xray_ablate.evaluation import PROB_COLUMNS, learning_check, majority_index, wilson
from xray_ablate.stats import intervals

# The metrics with per-image scores, as they are named in the run frame (all on the test set).
IMAGE_METRICS = {f"test_{m}": m for m in intervals.IMAGE_METRICS}
# The saliency audit's per-image columns (audit/audit.csv) -> label; the run's audit_<column>
# metric is the mean of its column.
METHOD_LABELS = ATTRIBUTION_METHODS
SHARES = {f"{share}_{method}": f"{where}, {label}" for method, label in METHOD_LABELS.items()
          for share, where in (("outside_lung", "outside lungs"), ("border", "border band"))}
AUDIT_METRICS = {f"audit_{column}": column for column in SHARES}
PROBE_METRIC = re.compile(r"probe_.+_accuracy")  # the feature probes (train/probe.py); not pixel_probe_
ECE = "test_ece"  # computed here from predictions.csv; training does not log it
LEARNING_NUMBERS = ("top_prediction_share", "loss_ratio", "majority_rate", "p_above_majority")


@dataclass
class Evidence:
    """Each run's predictions and saliency audit (by run id) and what the report derived from them."""

    predictions: dict[str, pd.DataFrame]
    audits: dict[str, pd.DataFrame] = field(default_factory=dict)  # audit/audit.csv (report.audit.load_audits)
    probes: dict[str, pd.DataFrame] = field(default_factory=dict)  # probe/probe.csv (load_probes)

    def has(self, run_id: str) -> bool:
        return run_id in self.predictions

    def scores(self, runs: pd.DataFrame, key: str, metric: str, scale: float) -> pd.DataFrame | None:
        """Seeds x image ids of the per-image scores of ``metric`` (intervals.image_scores; an audit
        share's per-image values; a feature probe's 0/1 per test image) of the runs of configuration
        ``key``, times ``scale``; None when a run lacks predictions (its audit, its probes) or the
        metric has no per-image scores."""
        sub = runs[runs["config_key"] == key]
        if metric in AUDIT_METRICS or PROBE_METRIC.fullmatch(metric):
            frames, column = ((self.audits, AUDIT_METRICS[metric]) if metric in AUDIT_METRICS
                              else (self.probes, metric.removesuffix("_accuracy")))
            if sub.empty or not all(r in frames and column in frames[r] for r in sub["run_id"]):
                return None
            return pd.DataFrame({seed: pd.Series(frames[run_id][column].to_numpy(float) * scale,
                                                 index=frames[run_id]["image_id"].to_numpy())
                                 for run_id, seed in zip(sub["run_id"], sub["seed"].astype(int), strict=True)
                                 }).T.sort_index()
        if metric not in IMAGE_METRICS or sub.empty or not all(self.has(r) for r in sub["run_id"]):
            return None
        rows = {}
        for run_id, seed in zip(sub["run_id"], sub["seed"].astype(int), strict=True):
            p = self.predictions[run_id]
            rows[seed] = pd.Series(intervals.image_scores(p["label"].to_numpy(), p[PROB_COLUMNS].to_numpy(),
                                                      IMAGE_METRICS[metric]) * scale,
                                   index=p["image_id"].to_numpy())
        return pd.DataFrame(rows).T.sort_index()


def add_run_evidence(runs: pd.DataFrame, evidence: Evidence) -> pd.DataFrame:
    """The run frame with, per run: test_ece, the Wilson interval of test accuracy and the
    learning check (recorded tags/metrics when training logged them, else derived from
    predictions.csv and the final train_loss with the same rule): learned (True/False/NaN when
    unknown), learned_reason, learned_source ("recorded" | "derived" | "")."""
    out = runs.copy()
    records = []
    for row in out.itertuples():
        rec: dict = {"learned": math.nan, "learned_reason": "", "learned_source": ""}
        p = evidence.predictions.get(row.run_id)
        if p is not None:
            labels, probs = p["label"].to_numpy(), p[PROB_COLUMNS].to_numpy()
            correct = int((probs.argmax(axis=1) == labels).sum())
            rec[ECE] = intervals.expected_calibration_error(labels, probs)
            rec["test_accuracy_wilson_low"], rec["test_accuracy_wilson_high"] = wilson(correct, len(labels))
            check = learning_check(labels, probs, getattr(row, "train_loss", math.nan), train_majority(row))
            rec.update({k: check[k] for k in LEARNING_NUMBERS}, learned=check["learned"],
                       learned_reason=check["reason"], learned_source="derived")
        tag = getattr(row, "learned_tag", None)
        if isinstance(tag, str) and tag.lower() in ("true", "false"):  # training's record wins
            rec.update(learned=tag.lower() == "true", learned_source="recorded",
                       learned_reason=str(getattr(row, "learned_reason_tag", "") or ""))
        records.append(rec)
    extra = pd.DataFrame(records, index=out.index)
    for column in extra.columns:
        if column in out.columns and column in LEARNING_NUMBERS:  # recorded metrics win
            extra[column] = out[column].fillna(extra[column])
        out[column] = extra[column]
    return out


def not_learned(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs flagged as not learned."""
    return runs[runs["learned"].eq(False)] if "learned" in runs else runs.iloc[:0]


def not_learned_warning(runs: pd.DataFrame, labels: dict[str, str]) -> str | None:
    """'k of n runs did not learn: ...' or None."""
    bad = not_learned(runs)
    if bad.empty:
        return None
    bad = bad.assign(why=bad["learned_reason"].replace("", "recorded as not learned"))
    items = "; ".join(
        f"{labels.get(key, key[:8])} seed{'s' if len(g) > 1 else ''} "
        f"{', '.join(str(int(v)) for v in sorted(g['seed']))} ({why})"
        for (key, why), g in bad.groupby(["config_key", "why"], sort=False))
    return (f"{len(bad)} of {len(runs)} runs did not learn: {items}; their accuracy measures the "
            "class mix, not the configuration.")


# --- references ----------------------------------------------------------------------------------

def train_majority(row) -> int | None:
    """The run's training majority class (from its n_train_<class> params); None when not logged."""
    counts = np.array([getattr(row, f"n_train_{c}", math.nan) for c in CLASSES], float)
    return majority_index(counts) if np.isfinite(counts).all() and counts.sum() > 0 else None


def class_shares(runs: pd.DataFrame, evidence: Evidence) -> pd.Series | None:
    """Share of each class in the test set, averaged over the runs (per-seed splits differ):
    from predictions.csv, else the test_support_<class> metrics; None when neither is there."""
    shares = []
    for row in runs.itertuples():
        p = evidence.predictions.get(row.run_id)
        if p is not None:
            counts = np.bincount(p["label"].to_numpy(), minlength=len(CLASSES)).astype(float)
        else:
            counts = np.array([getattr(row, f"test_support_{c}", math.nan) for c in CLASSES], float)
        if np.isfinite(counts).all() and counts.sum() > 0:
            shares.append(counts / counts.sum())
    return pd.Series(np.mean(shares, axis=0), index=list(CLASSES)) if shares else None


def references(shares: pd.Series | None, runs: pd.DataFrame) -> pd.DataFrame:
    """Reference rows: chance (uniform random guesses, 1/K) and always predicting the training
    split's majority class (evaluation.majority; from the runs' n_train_<class>, summed; no such row
    when they were not logged), for each metric the run table shows (fractions; NaN where undefined)."""
    k = len(CLASSES)
    if shares is None:
        return pd.DataFrame()
    present = shares[shares > 0]
    kp = len(present)
    counts = np.array([runs[f"n_train_{c}"].sum() if f"n_train_{c}" in runs else math.nan for c in CLASSES])
    top = CLASSES[majority_index(counts)] if np.isfinite(counts).all() and counts.sum() > 0 else None
    chance_f1 = {c: 2 * s / k / (s + 1 / k) if s > 0 else math.nan for c, s in shares.items()}
    # balanced accuracy: the mean recall over the classes the test split holds. A uniform guess
    # recalls 1/K of each, whether or not the others are there; the majority class recalls all of
    # its own and none of the rest, and nothing when the test split has none of it.
    kinds = [(f"chance (1/{k})", 1 / k, 1 / k, chance_f1)]
    if top is not None:
        r = float(shares[top])
        kinds.append((f"majority class ({top})", r, 1 / kp if r > 0 else 0.0,
                      {c: (2 * r / (1 + r) if c == top else 0.0) if shares[c] > 0 else math.nan for c in CLASSES}))
    rows = []
    for name, acc, balanced, f1 in kinds:
        row = {"config": f"reference: {name}", "test_accuracy": acc,
               "test_balanced_accuracy": balanced, "test_roc_auc_ovr": 0.5, ECE: math.nan,
               "test_macro_f1": float(np.nanmean([f1[c] for c in present.index]))}
        row |= {f"test_f1_{c}": f1[c] for c in CLASSES}
        rows.append(row)
    return pd.DataFrame(rows)


# --- image-level comparisons ---------------------------------------------------------------------

def mcnemar_table(runs: pd.DataFrame, evidence: Evidence, configs: pd.DataFrame,
                  baseline_key: str) -> pd.DataFrame:
    """Exact McNemar per seed pair (equal seeds, same test images) of every configuration against
    the baseline: accuracies, images right only for one side, images whose predicted class
    differs, and the two-sided p of the discordant pairs."""
    def by_seed(key):
        sub = runs[(runs["config_key"] == key) & runs["run_id"].map(evidence.has)]
        return dict(zip(sub["seed"].astype(int), sub["run_id"], strict=True))

    base = by_seed(baseline_key)
    rows = []
    for cfg in configs.itertuples():
        if cfg.config_key == baseline_key:
            continue
        for seed, run_id in sorted(by_seed(cfg.config_key).items()):
            if seed not in base:
                continue
            a = evidence.predictions[run_id].set_index("image_id")
            b = evidence.predictions[base[seed]].set_index("image_id")
            shared = a.index.intersection(b.index)
            a, b = a.loc[shared], b.loc[shared]
            pa, pb = a[PROB_COLUMNS].to_numpy().argmax(1), b[PROB_COLUMNS].to_numpy().argmax(1)
            ra, rb = pa == a["label"].to_numpy(), pb == b["label"].to_numpy()
            only_a, only_b, p = intervals.mcnemar_exact(ra, rb)
            rows.append({"config": cfg.config, "config_key": cfg.config_key, "seed": seed,
                         "n_images": len(shared), "accuracy": 100 * ra.mean(),
                         "baseline_accuracy": 100 * rb.mean(), "only_config_right": only_a,
                         "only_baseline_right": only_b, "predictions_differ": int((pa != pb).sum()),
                         "p_exact": p})
    return pd.DataFrame(rows, columns=["config", "config_key", "seed", "n_images", "accuracy",
                                       "baseline_accuracy", "only_config_right",
                                       "only_baseline_right", "predictions_differ", "p_exact"])


def variance_table(split: intervals.VarianceSplit, unit: str) -> pd.DataFrame:
    """The baseline's variance decomposition as rows (quantity, value in the metric's unit)."""
    rows = [
        ("seed sd: one run, another seed (same test images)", split.seed_sd),
        ("test-sample sd: one run, another test set of the same size", split.test_sample_sd),
        ("total sd of one run (both)", split.run_sd),
        (f"SE of the mean over {split.n_seeds} seeds, from the seeds", split.se_seed),
        (f"SE of the mean, from the {split.n_images} test images", split.se_image),
        ("SE of the mean, total", split.se_total),
        ("SE with twice the seeds", split.se_with(seeds=2)),
        ("SE with twice the test images", split.se_with(images=2)),
        ("SE with unlimited seeds (the test-sample floor)", split.se_image),
    ]
    return pd.DataFrame({"quantity": [q for q, _ in rows], f"value ({unit})": [v for _, v in rows]})


def floor_table(detect: tuple[float, ...], seed_sd: float, se_image: float, n_seeds: int,
                n_images: int, alpha: float, power: float) -> pd.DataFrame:
    """For each target difference: seed pairs needed with the test images fixed (inf: no number
    of seeds reaches it), and test images needed at the current seeds."""
    rows = []
    for diff in detect:
        seeds = intervals.seeds_needed_with_floor(diff, seed_sd, se_image, n_images, alpha, power)
        images = intervals.images_needed(diff, seed_sd, n_seeds, se_image, n_images, alpha, power)
        if seeds == math.inf:
            note = (f"no number of seeds reaches it: the test-sample SE of Δ alone "
                    f"({se_image:.2f}) is too large" + (f"; about {int(images)} test images would, "
                                                        f"at {n_seeds} seeds" if np.isfinite(images)
                                                        else ""))
        else:
            note = ""
        rows.append({"difference": diff, "seeds_needed": seeds, "images_needed": images,
                     "note": note})
    return pd.DataFrame(rows, columns=["difference", "seeds_needed", "images_needed", "note"])
