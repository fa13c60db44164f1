"""The report's tables as numbers, computed from the tidy run frame (runs.py) with the statistics
(stats/): each a numeric frame, written as CSV; render/tables.py formats them as text. Fractions
(accuracy, F1, ...) are in percent, so differences are in percentage points (pp); losses keep
their own unit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xray_ablate.config.choices import CLASSES
from xray_ablate.config.factors import factor_names
from xray_ablate.report.images import ECE, Evidence
from xray_ablate.stats import intervals
from xray_ablate.stats.claims import cell_labels


@dataclass(frozen=True)
class Settings:
    """The report.* settings the statistics use."""

    metric: str = "test_accuracy"
    alpha: float = 0.05
    power: float = 0.8
    detect: tuple[float, ...] = (1.0, 2.0, 3.0)  # differences for the seeds-needed rows
    n_resamples: int = 9999
    bootstrap_seed: int = 0
    delta: float = 2.0  # sweep.delta: the equivalence margin of the verdicts, in pp of the metric

    @property
    def confidence(self) -> float:
        return 1.0 - self.alpha

    @property
    def scale(self) -> float:
        return metric_scale(self.metric)

    @property
    def higher_is_better(self) -> bool:
        # an audit share (attribution outside the lungs, in the border) is shortcut use: less is better
        return not (self.metric.endswith("loss") or self.metric == ECE or self.metric.startswith("audit_"))

    @property
    def unit(self) -> str:
        return "pp" if self.scale == 100 else ""

    @property
    def prefix(self) -> str:
        head = self.metric.split("_", 1)[0]
        return head if head in ("test", "val") else "test"


def metric_scale(metric: str) -> float:
    """100 for fractions (shown in percent), 1 for losses."""
    return 1.0 if metric.endswith("loss") else 100.0


# --- configurations ------------------------------------------------------------------------------

def configurations(runs: pd.DataFrame, baseline_key: str) -> pd.DataFrame:
    """One row per config key: factor levels, n seeds, the seeds and a short label.

    The label lists the factors
    that differ from the baseline ("augmentation=off"); the baseline is "baseline".
    Order: the baseline, then by the number of factors changed, then by level.
    """
    first = runs.groupby("config_key", sort=False)[list(factor_names())].first()
    seeds = runs.groupby("config_key")["seed"].agg(lambda s: sorted(int(v) for v in s))
    configs = first.assign(n=seeds.map(len), seeds=seeds.map(lambda s: ", ".join(map(str, s))))
    base = configs.loc[baseline_key]
    configs["config"] = pd.Series(cell_labels(configs[list(factor_names())], baseline_key))  # the claims' names

    def rank(k: str) -> tuple:  # fewest changes from the baseline first, then by levels
        levels = tuple(configs.loc[k, list(factor_names())])
        return (sum(a != b for a, b in zip(levels, base[list(factor_names())], strict=True)), levels, k)

    order = [baseline_key] + sorted((k for k in configs.index if k != baseline_key), key=rank)
    configs = configs.loc[order]
    configs.index.name = "config_key"
    return configs.reset_index()[["config", "config_key", *factor_names(), "n", "seeds"]]


def _by_seed(runs: pd.DataFrame, key: str, column: str, scale: float) -> pd.Series:
    sub = runs[runs["config_key"] == key]
    if column not in sub:
        return pd.Series(dtype=float)
    return pd.Series(sub[column].to_numpy(dtype=float) * scale, index=sub["seed"].astype(int))


def f1_columns(prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}_macro_f1", "macro F1")] + [(f"{prefix}_f1_{c}", f"F1 {c}") for c in CLASSES]


# --- run table -----------------------------------------------------------------------------------

# Shown next to the primary metric, each with its interval over seeds and test images.
SECONDARY = ("test_accuracy", "test_balanced_accuracy", "test_roc_auc_ovr", ECE)
MIN_SEEDS_RESAMPLED = 5  # P(improvement) and the bootstrap over seeds are shown from 5 seeds per side
TOTAL_COLUMNS = ("ci_total_low", "ci_total_high", "se_seed", "se_image", "df_total")
DELTA_TOTAL_COLUMNS = ("delta_ci_total_low", "delta_ci_total_high", "delta_se_seed",
                       "delta_se_image", "p_total")


def _total_columns(runs: pd.DataFrame, key: str, base: pd.DataFrame | None, settings: Settings,
                   evidence: Evidence | None) -> dict:
    """The intervals over seeds and test images of one configuration: its metric, its Δ vs the
    baseline (``base``: the baseline's score matrix, None for the baseline row), the secondary
    metrics."""
    m, conf = settings.metric, settings.confidence
    row = dict.fromkeys((*TOTAL_COLUMNS, *DELTA_TOTAL_COLUMNS), math.nan)
    scores = evidence.scores(runs, key, m, settings.scale) if evidence else None
    if scores is not None:
        total = intervals.total_interval(scores, conf)
        row.update(ci_total_low=total.low, ci_total_high=total.high, se_seed=total.se_seed,
                   se_image=total.se_image, df_total=total.df)
        if base is not None:
            diff = intervals.total_difference(scores, base, conf)
            row.update(delta_ci_total_low=diff.low, delta_ci_total_high=diff.high,
                       delta_se_seed=diff.se_seed, delta_se_image=diff.se_image, p_total=diff.pvalue)
    sub = runs[runs["config_key"] == key]
    for metric in SECONDARY:
        if metric == m:
            continue
        other = evidence.scores(runs, key, metric, 100.0) if evidence else None
        ci = intervals.total_interval(other, conf) if other is not None else None
        # From predictions.csv when there (the interval's centre), else the logged metric.
        row[f"{metric}_mean"] = (ci.estimate if ci else sub[metric].astype(float).mean() * 100
                                 if metric in sub else math.nan)
        row[f"{metric}_ci_total_low"] = ci.low if ci else math.nan
        row[f"{metric}_ci_total_high"] = ci.high if ci else math.nan
    learned = sub["learned"] if "learned" in sub else pd.Series(dtype=object)
    row["n_not_learned"] = (float(learned.eq(False).sum()) if learned.notna().any() else math.nan)
    return row


def run_table(runs: pd.DataFrame, baseline_key: str, settings: Settings,
              evidence: Evidence | None = None) -> pd.DataFrame:
    """One row per configuration: the metric's mean, sd, t and bootstrap CIs, F1s, and Δ vs baseline.

    Δ = config - baseline in the metric's unit with its CI and p-value: the paired t-test over the
    seeds both have (runs here always share the split of equal seeds), Welch's test when fewer than
    two seeds pair. p_holm is Holm-corrected over all non-baseline rows. p_improvement is
    intervals.prob_improvement: P that a random run of the config beats a random run of the baseline
    (beats = higher, or lower for a loss).
    """
    m, scale, conf = settings.metric, settings.scale, settings.confidence
    table = configurations(runs, baseline_key)
    base = _by_seed(runs, baseline_key, m, scale)
    base_scores = evidence.scores(runs, baseline_key, m, scale) if evidence else None
    rows = []
    for _, cfg in table.iterrows():
        key = cfg["config_key"]
        values = _by_seed(runs, key, m, scale)
        row: dict = {f"{m}_mean": values.mean(), f"{m}_sd": values.std(ddof=1) if len(values) > 1
                     else math.nan}
        row[f"{m}_t_low"], row[f"{m}_t_high"] = intervals.t_interval(values, conf)
        row[f"{m}_boot_low"], row[f"{m}_boot_high"] = intervals.bootstrap_interval(
            values, conf, settings.n_resamples, settings.bootstrap_seed)
        for column, _ in f1_columns(settings.prefix):
            f1 = _by_seed(runs, key, column, 100.0)
            row[f"{column}_mean"] = f1.mean() if len(f1) else math.nan
            row[f"{column}_sd"] = f1.std(ddof=1) if len(f1) > 1 else math.nan
        notes = []
        if len(values) < 2:
            notes.append(f"n = {len(values)}: no CI or test (needs at least 2 seeds)")
        if key == baseline_key:
            row.update(delta=math.nan, delta_low=math.nan, delta_high=math.nan, delta_sd=math.nan,
                       test="", n_pairs=0, p=math.nan, p_improvement=math.nan)
        else:
            comp = intervals.compare(values, base, pairable=True, confidence=conf)
            common = values.index.intersection(base.index)
            paired = comp.test == "paired t"
            row.update(delta=comp.delta, delta_low=comp.low, delta_high=comp.high,
                       delta_sd=(values.loc[common] - base.loc[common]).std(ddof=1) if paired
                       else math.nan,
                       test=comp.test if np.isfinite(comp.low) else "", n_pairs=comp.n_pairs,
                       p=comp.pvalue,
                       p_improvement=intervals.prob_improvement(values, base)
                       if settings.higher_is_better else intervals.prob_improvement(base, values))
            if np.isfinite(comp.low) and comp.low == comp.high:
                notes.append("every seed gives the same difference: no spread, no test")
            if paired and comp.n_pairs < min(len(values), len(base)):
                notes.append(f"paired over the {comp.n_pairs} common seeds")
            if len(base) < 2 and len(values) >= 2:
                notes.append("baseline has fewer than 2 seeds: no Δ CI")
        row |= _total_columns(runs, key, None if key == baseline_key else base_scores, settings,
                              evidence)
        row["note"] = "; ".join(notes)
        rows.append(row)
    table = pd.concat([table, pd.DataFrame(rows, index=table.index)], axis=1)
    table["p_holm"] = intervals.holm(table["p"].to_numpy())
    table["p_total_holm"] = intervals.holm(table["p_total"].to_numpy())
    first = ["config", "config_key", *factor_names(), "n", "seeds", "n_not_learned"]
    placed = {"p_holm", "note", "p_total_holm", *TOTAL_COLUMNS, *DELTA_TOTAL_COLUMNS}
    ordered = first + [c for c in table.columns if c not in first and c not in placed]
    at = ordered.index(f"{m}_boot_high") + 1
    ordered[at:at] = list(TOTAL_COLUMNS)
    at = ordered.index("delta_high") + 1
    ordered[at:at] = list(DELTA_TOTAL_COLUMNS[:-1])
    at = ordered.index("p") + 1
    ordered[at:at] = ["p_holm", "p_total", "p_total_holm"]
    return table[ordered + ["note"]]


def baseline_sd(table: pd.DataFrame, settings: Settings) -> tuple[int, float]:
    row = table.iloc[0]
    return int(row["n"]), float(row[f"{settings.metric}_sd"])


def _pooled(sds: pd.Series, dfs: pd.Series) -> tuple[float, int, int]:
    """sqrt(sum df_i s_i^2 / sum df_i) over the groups with df_i >= 1: (sd, df, groups)."""
    ok = np.isfinite(sds.to_numpy(float)) & (dfs.to_numpy(float) >= 1)
    s, d = sds.to_numpy(float)[ok], dfs.to_numpy(float)[ok]
    if not ok.any():
        return math.nan, 0, 0
    return float(math.sqrt(np.sum(d * s**2) / np.sum(d))), int(d.sum()), int(ok.sum())


def pooled_sd(table: pd.DataFrame, settings: Settings) -> tuple[float, int, int]:
    """The pooled within-configuration (seed-to-seed) sd over every configuration with n >= 2.

    (sd, df, configurations): the residual sd of the one-way model "metric ~ configuration",
    df = sum(n_i - 1).
    """
    return _pooled(table[f"{settings.metric}_sd"], table["n"] - 1)


def pooled_paired_sd(table: pd.DataFrame) -> tuple[float, int, int]:
    """The pooled sd of the seed-matched differences against the baseline, over the rows tested
    with the paired t-test: (sd, df = sum(pairs_i - 1), configurations)."""
    paired = table[table["test"] == "paired t"]
    return _pooled(paired["delta_sd"], paired["n_pairs"] - 1)


def delta_tests(table: pd.DataFrame) -> set[str]:
    """The tests behind the run table's Δ intervals: {"paired t", "Welch t"} or a subset."""
    return {t for t in table["test"].iloc[1:] if t}


SD_ROW, DF_ROW, POOLED_ROW = "sd used ({})", "df of the sd", "configurations pooled"


def mdd_row(n: int, settings: Settings) -> str:
    return f"minimum detectable difference at n = {n} ({settings.unit or 'units'})"


def power_table(table: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Minimum detectable difference at the baseline's n and seeds needed for each target.

    Unpaired (two-sample t-test, TTestIndPower): the pooled within-configuration sd over every
    configuration with at least 2 seeds (``pooled_sd``). Paired (one-sample t-test of the
    seed-matched differences, TTestPower): the pooled sd of the paired differences against the
    baseline (``pooled_paired_sd``). Each column states its df and how many configurations it pools.
    """
    n, _ = baseline_sd(table, settings)
    sd, df, k = pooled_sd(table, settings)
    pair_sd, pair_df, pair_k = pooled_paired_sd(table)
    unit = settings.unit or "units"
    kw = {"alpha": settings.alpha, "power": settings.power}
    rows = [
        {"quantity": SD_ROW.format(unit), "unpaired": sd, "paired": pair_sd},
        {"quantity": DF_ROW, "unpaired": float(df), "paired": float(pair_df)},
        {"quantity": POOLED_ROW, "unpaired": float(k), "paired": float(pair_k)},
        {"quantity": mdd_row(n, settings),
         "unpaired": intervals.min_detectable_difference(n, sd, **kw),
         "paired": intervals.min_detectable_difference(n, pair_sd, paired=True, **kw)},
    ]
    for diff in settings.detect:
        rows.append({"quantity": f"seeds needed to detect {diff:g} {unit}",
                     "unpaired": intervals.seeds_needed(diff, sd, **kw),
                     "paired": intervals.seeds_needed(diff, pair_sd, paired=True, **kw)})
    return pd.DataFrame(rows)


# --- model table ---------------------------------------------------------------------------------

@dataclass
class ModelTable:
    numeric: pd.DataFrame  # metric, backbone, config, n, mean, sd
    notes: list[str] = field(default_factory=list)


def model_table(runs: pd.DataFrame, baseline_key: str, settings: Settings) -> ModelTable | None:
    """One column per backbone: accuracy, macro precision/recall and per-class F1 (mean ± sd).

    Each backbone's column is its configuration with the baseline's other factor levels, else
    (said in the notes) its configuration with the most seeds. None with a single backbone.
    """
    backbones = sorted(runs["backbone"].unique())
    if len(backbones) < 2:
        return None
    base = runs[runs["config_key"] == baseline_key].iloc[0]
    others = [f for f in factor_names() if f != "backbone"]
    backbones.sort(key=lambda b: (b != base["backbone"], b))
    p = settings.prefix
    metrics = [(f"{p}_accuracy", "accuracy"), (f"{p}_macro_precision", "macro precision"),
               (f"{p}_macro_recall", "macro recall")] + [(f"{p}_f1_{c}", f"F1 {c}") for c in CLASSES]
    rows, notes = [], []
    for backbone in backbones:
        sub = runs[runs["backbone"] == backbone]
        same = sub[(sub[others] == base[others]).all(axis=1)]
        pool = same if not same.empty else sub
        counts = pool.groupby("config_key").size().sort_values(ascending=False, kind="stable")
        key = counts.index[0]
        if same.empty:
            notes.append(f"{backbone}: no run with the baseline's other factor levels; "
                         f"shown: its configuration with the most seeds ({key[:8]}).")
        chosen = sub[sub["config_key"] == key]
        for column, label in metrics:
            values = (chosen[column].astype(float) * 100.0 if column in chosen
                      else pd.Series(dtype=float))
            rows.append({"metric": label, "backbone": backbone, "config_key": key,
                         "n": int(values.notna().sum()), "mean": values.mean(),
                         "sd": values.std(ddof=1) if values.notna().sum() > 1 else math.nan})
    return ModelTable(pd.DataFrame(rows), notes)


# --- factorial analysis --------------------------------------------------------------------------

@dataclass
class Factorial:
    factors: list[str]
    data: pd.DataFrame  # the runs used, metric column in the metric's unit
    main: pd.DataFrame
    interactions: pd.DataFrame
    anova: pd.DataFrame
    notes: list[str]


def reference_levels(runs: pd.DataFrame, baseline_key: str) -> dict[str, str]:
    """The level each effect is measured against: off, raw, else the baseline's level; pass the
    runs of the design the effects are computed on (a level run only outside it is no reference)."""
    base = runs[runs["config_key"] == baseline_key].iloc[0]
    refs = {}
    for factor in factor_names():
        levels = set(runs[factor])
        if "off" in levels and levels <= {"on", "off"}:
            refs[factor] = "off"
        elif factor == "dataset" and "raw" in levels:
            refs[factor] = "raw"
        else:
            refs[factor] = base[factor] if base[factor] in levels else min(levels)
    return refs


def crossed_design(runs: pd.DataFrame, baseline_key: str
                   ) -> tuple[list[str], pd.DataFrame, str] | None:
    """The largest set of factors (at least 2) whose every combination was run.

    Varied factors left out of the set are held at the baseline's level. None (with no design)
    when fewer than two factors vary or no two of them are crossed.
    """
    base = runs[runs["config_key"] == baseline_key].iloc[0]
    varied = [f for f in factor_names() if runs[f].nunique() > 1]
    for size in range(len(varied), 1, -1):
        best = None
        for subset in itertools.combinations(varied, size):
            rest = [f for f in varied if f not in subset]
            sub = runs[(runs[rest] == base[rest]).all(axis=1)] if rest else runs
            levels = [sorted(sub[f].unique()) for f in subset]
            if any(len(lv) < 2 for lv in levels):
                continue
            cells = set(map(tuple, sub[list(subset)].to_numpy()))
            if cells == set(itertools.product(*levels)) and (best is None or len(sub) > len(best[1])):
                best = (list(subset), sub, rest)
        if best:
            factors, sub, rest = best
            held = ", ".join(f"{f}={base[f]}" for f in rest)
            note = (f"Crossed factors: {' × '.join(factors)} ({len(sub)} runs)"
                    + (f"; held at the baseline level: {held}." if held else "."))
            return factors, sub, note
    return None


def factorial(runs: pd.DataFrame, baseline_key: str, settings: Settings,
              evidence: Evidence | None = None) -> Factorial | None:
    """Main effects, two-way interactions and the ANOVA of a crossed design, else None. With
    ``evidence`` (per-image predictions) each effect also gets its interval and p over seeds +
    test images (``add_total_intervals``)."""
    design = crossed_design(runs, baseline_key)
    if design is None:
        return None
    factors, sub, note = design
    m = settings.metric
    data = sub[[*factors, "config_key", "seed"]].copy()
    data[m] = sub[m].astype(float) * settings.scale
    refs = reference_levels(sub, baseline_key)  # levels in the design: "raw" run elsewhere is none
    notes = [note]
    if intervals.residual_df(data, factors) <= 0:
        notes.append("No seed replication: each combination of the crossed factors has a single "
                     "run, so there is no seed-to-seed (residual) variance: the effects are "
                     "estimates without CI or p, and the ANOVA shows sums of squares without F "
                     "or p (run at least 2 seeds per configuration).")
    if data.groupby(factors)["config_key"].nunique().max() > 1:
        notes.append("Some factor combinations hold several configurations (other settings "
                     "differ); they are pooled.")
    main = intervals.main_effects(data, factors, m, refs, settings.confidence)
    inter = intervals.interactions(data, factors, m, refs, settings.confidence)
    anova = intervals.anova_table(data, factors, m)
    for frame in (main, inter):
        frame["p_holm"] = intervals.holm(frame["p"].to_numpy())
    cells = _cell_scores(sub, factors, evidence, settings) if evidence is not None else None
    levels = {f: sorted(data[f].astype(str).unique()) for f in factors}
    add_total_intervals(main, inter, factors, levels, cells, settings.confidence)
    return Factorial(factors, data, main, inter, anova, notes)


def _cell_scores(sub: pd.DataFrame, factors: list[str], evidence: Evidence,
                 settings: Settings) -> dict[str, pd.DataFrame] | None:
    """Cell label -> seeds x images scores of its one configuration; None when a cell pools
    several configurations or a run lacks predictions (no per-image evidence to add)."""
    cells = {}
    for levels, group in sub.groupby(factors):
        keys = group["config_key"].unique()
        scores = evidence.scores(group, keys[0], settings.metric, settings.scale) if len(keys) == 1 else None
        if scores is None:
            return None
        cells[intervals.cell_label([str(v) for v in levels])] = scores
    return cells


def add_total_intervals(main: pd.DataFrame, inter: pd.DataFrame, factors: list[str], levels: dict[str, list[str]],
                        cells: dict[str, pd.DataFrame] | None, confidence: float) -> None:
    """total_low/high, p_total and p_total_holm (Holm within each frame) of every effect: the
    seed-matched, image-matched contrast of intervals.total_contrast; NaN without cells."""
    signs = {"main": lambda r: {r.factor: (r.level, r.reference)},
             "inter": lambda r: {r.factor_a: (r.level_a, r.reference_a), r.factor_b: (r.level_b, r.reference_b)}}
    for name, frame in (("main", main), ("inter", inter)):
        totals = [intervals.total_contrast(cells, intervals.contrast_weights(factors, levels, signs[name](r)),
                                           confidence) if cells else None for r in frame.itertuples()]
        frame["total_low"] = [t.low if t else math.nan for t in totals]
        frame["total_high"] = [t.high if t else math.nan for t in totals]
        frame["p_total"] = [t.pvalue if t else math.nan for t in totals]
        frame["p_total_holm"] = intervals.holm(frame["p_total"].to_numpy()) if len(frame) else []


def reference_rows(references: pd.DataFrame, table: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """The reference rows (chance, majority class) with the run table's column names and units."""
    if references is None or references.empty:
        return pd.DataFrame(columns=["config"])
    ref = pd.DataFrame({"config": references["config"]})
    m = settings.metric
    if m in references:
        ref[f"{m}_mean"] = references[m] * settings.scale
    for column in references.columns:
        if column not in ("config", m) and f"{column}_mean" in table:
            ref[f"{column}_mean"] = references[column] * 100
    for column in ("wilson_low", "wilson_high", "note"):
        if column in references:
            ref[column] = references[column] * (100 if column != "note" else 1)
    return ref


def select_levels(levels: Mapping[str, object] | None) -> dict[str, str | None]:
    """report.baseline as {factor: level or None}; a YAML/CLI boolean means on/off."""
    def level(v: object) -> str | None:
        if isinstance(v, bool):
            return "on" if v else "off"
        return None if v is None else str(v)

    return {str(k): level(v) for k, v in dict(levels or {}).items()}
