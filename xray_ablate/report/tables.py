"""The report's tables, computed from the tidy run frame (runs.py) with the statistics (stats/intervals.py).

Each table comes as a numeric frame (written as CSV) and, via the ``display_*`` functions, as
formatted text (Markdown and LaTeX). Fractions (accuracy, F1, ...) are shown in percent, so
differences are in percentage points (pp); losses keep their own unit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xray_ablate.config.choices import CLASSES
from xray_ablate.config.factors import factor_labels, factor_names
from xray_ablate.report.images import ECE, Evidence
from xray_ablate.stats import intervals
from xray_ablate.stats.verdicts import Verdict


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
        return not (self.metric.endswith("loss") or self.metric == ECE)

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


def metric_title(metric: str) -> str:
    return metric.replace("_", " ")


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
    labels = {}
    for key, row in configs.iterrows():
        diff = [f"{f}={row[f]}" for f in factor_names() if row[f] != base[f]]
        labels[key] = "baseline" if key == baseline_key else (", ".join(diff) or "baseline levels")
    configs["config"] = pd.Series(labels)
    dup = configs["config"].duplicated(keep=False)
    configs.loc[dup, "config"] += " [" + configs.index[dup].str[:8] + "]"
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


def _f1_columns(prefix: str) -> list[tuple[str, str]]:
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
        for column, _ in _f1_columns(settings.prefix):
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
    """The level each effect is measured against: off, raw, else the baseline's level."""
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
    refs = reference_levels(runs, baseline_key)
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


# --- formatting ----------------------------------------------------------------------------------

def fmt(value, digits: int = 1) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def fmt_pm(mean, sd, digits: int = 1) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if np.isfinite(sd) else "")


def fmt_ci(low, high, digits: int = 1, percent: bool = False) -> str:
    """``percent``: the interval of a percentage, shown cut to [0, 100] (a t or normal interval
    over few seeds can overshoot; the CSV files keep the uncut bounds)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "–"
    if percent:
        low, high = max(low, 0.0), min(high, 100.0)
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def overshoots(low, high) -> bool:
    """Whether a percentage's interval reaches outside [0, 100] (and is shown cut)."""
    return bool(np.isfinite(low) and np.isfinite(high) and (low < 0 or high > 100))


def fmt_p(p) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


CLIPPED = "CI clipped to [0, 100] %"


def is_fraction(metric: str) -> bool:
    """Metrics in [0, 1] (shown in %): accuracies, F1, AUC...; not losses or support counts."""
    return metric_scale(metric) == 100 and "support" not in metric


SEEDS_ONLY = "over seeds"  # what each interval header says it covers
SEEDS_AND_IMAGES = "over seeds + test images"
FEW_SEEDS = f"bootstrap CI and P(improvement) need ≥ {MIN_SEEDS_RESAMPLED} seeds per side"


def display_run_table(table: pd.DataFrame, settings: Settings,
                      references: pd.DataFrame | None = None, verdicts: Sequence[Verdict] = ()) -> pd.DataFrame:
    """The run table as text; a fraction's intervals are shown clipped to [0, 100] % (the CSV
    keeps the unclipped bounds) and the note says so for the main metric. Headers say what each interval covers:
    seeds only (one fixed test set) or seeds and test images. The bootstrap CI and
    P(improvement) show "–" below MIN_SEEDS_RESAMPLED seeds per side. ``references`` (chance,
    majority class) are appended as rows; ``verdicts`` give each configuration's verdict against the
    baseline (its claim "<config> − baseline")."""
    m, unit = settings.metric, settings.unit
    title = metric_title(m) + (" (%)" if unit else "")
    level = f"{settings.confidence:.0%}"
    base_n = int(table["n"].iloc[0])
    few = table["n"].lt(MIN_SEEDS_RESAMPLED)
    few_pair = few | (base_n < MIN_SEEDS_RESAMPLED)
    out = pd.DataFrame({"config": table["config"]})
    for factor in factor_names():
        out[factor_labels()[factor]] = table[factor]
    out["n"] = table["n"]
    out["runs not learned"] = table["n_not_learned"].map(lambda v: fmt(v, 0))
    out[title] = [fmt_pm(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_sd"], strict=True)]
    fraction = is_fraction(m)
    notes = table["note"].fillna("").astype(str)
    t_low, t_high = table[f"{m}_t_low"].astype(float), table[f"{m}_t_high"].astype(float)
    total_low, total_high = table["ci_total_low"].astype(float), table["ci_total_high"].astype(float)
    if fraction:
        clipped = pd.Series([overshoots(*b) or overshoots(*c) for b, c in zip(
            zip(t_low, t_high, strict=True), zip(total_low, total_high, strict=True), strict=True)],
            index=notes.index)
        notes = notes.where(~clipped, [f"{n}; {CLIPPED}" if n else CLIPPED for n in notes])
    out[f"{level} CI {SEEDS_ONLY} (t)"] = [fmt_ci(a, b, percent=fraction) for a, b in zip(t_low, t_high, strict=True)]
    out[f"{level} CI {SEEDS_AND_IMAGES}"] = [fmt_ci(a, b, percent=fraction)
                                              for a, b in zip(total_low, total_high, strict=True)]
    out[f"{level} CI {SEEDS_ONLY} (bootstrap)"] = [
        "–" if f else fmt_ci(a, b)
        for f, a, b in zip(few, table[f"{m}_boot_low"], table[f"{m}_boot_high"], strict=True)]
    for metric in SECONDARY:
        if metric != m and f"{metric}_mean" in table:
            out[f"{metric_title(metric)} (%) [{level} CI {SEEDS_AND_IMAGES}]"] = [
                fmt(v) + ("" if fmt_ci(a, b) == "–" else f" {fmt_ci(a, b, percent=True)}") for v, a, b in
                zip(table[f"{metric}_mean"], table[f"{metric}_ci_total_low"],
                    table[f"{metric}_ci_total_high"], strict=True)]
    for column, label in _f1_columns(settings.prefix):
        out[label + " (%)"] = [fmt_pm(a, b) for a, b in
                               zip(table[f"{column}_mean"], table[f"{column}_sd"], strict=True)]
    rows = table.index > 0
    out[f"Δ ({unit or 'units'})"] = [fmt(v) if k else "" for k, v in zip(rows, table["delta"], strict=True)]
    out[f"Δ {level} CI {SEEDS_ONLY}"] = [fmt_ci(a, b) if k else "" for k, a, b in
                                         zip(rows, table["delta_low"], table["delta_high"], strict=True)]
    out[f"Δ {level} CI {SEEDS_AND_IMAGES}"] = [
        fmt_ci(a, b) if k else "" for k, a, b in
        zip(rows, table["delta_ci_total_low"], table["delta_ci_total_high"], strict=True)]
    out["test"] = table["test"]
    out[f"p {SEEDS_ONLY}"] = [fmt_p(v) if k else "" for k, v in zip(rows, table["p"], strict=True)]
    out[f"p {SEEDS_ONLY} (Holm)"] = [fmt_p(v) if k else "" for k, v in zip(rows, table["p_holm"], strict=True)]
    out[f"p {SEEDS_AND_IMAGES} (Holm)"] = [fmt_p(v) if k else "" for k, v in
                                           zip(rows, table["p_total_holm"], strict=True)]
    out["P(improvement)"] = [("–" if f else fmt(v, 2)) if k else "" for k, f, v in
                             zip(rows, few_pair, table["p_improvement"], strict=True)]
    if few_pair.iloc[1:].any() or few.iloc[0]:
        notes = pd.Series([f"{n}; {FEW_SEEDS}" if n else FEW_SEEDS for n in notes], index=notes.index
                          ).where(few_pair | few, notes)
    out["note"] = notes
    by_claim = {v.claim: v.verdict for v in verdicts}
    out["verdict vs baseline"] = ["" if not k else by_claim.get(f"{c} − baseline", "–")
                                  for k, c in zip(rows, table["config"], strict=True)]
    # The first screen: what ran, how often, the result with its interval, its verdict, and Δ with
    # its interval; the factor levels (the config label already names the changed ones) follow.
    lead = ["config", "n", "runs not learned", title, f"{level} CI {SEEDS_AND_IMAGES}", "verdict vs baseline",
            f"Δ ({unit or 'units'})", f"Δ {level} CI {SEEDS_AND_IMAGES}", f"p {SEEDS_AND_IMAGES} (Holm)"]
    out = out[lead + [c for c in out.columns if c not in lead]]
    if references is not None and len(references):
        ref = pd.DataFrame({"config": references["config"]})
        ref[title] = (references[m] * settings.scale).map(fmt) if m in references else "–"
        for metric in SECONDARY:
            label = f"{metric_title(metric)} (%) [{level} CI {SEEDS_AND_IMAGES}]"
            if label in out and metric in references:
                ref[label] = (references[metric] * 100).map(fmt)
        for column, label in _f1_columns(settings.prefix):
            key = column.replace(settings.prefix, "test", 1)
            if key in references:
                ref[label + " (%)"] = (references[key] * 100).map(fmt)
        out = pd.concat([out.astype(object), ref.astype(object)], ignore_index=True).fillna("")
    return out


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
    return ref


def display_mcnemar(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "config": frame["config"], "seed": frame["seed"], "test images": frame["n_images"],
        "accuracy (%)": frame["accuracy"].map(fmt), "baseline accuracy (%)": frame["baseline_accuracy"].map(fmt),
        "right only here": frame["only_config_right"], "right only in baseline": frame["only_baseline_right"],
        "predicted class differs": frame["predictions_differ"],
        "p (exact McNemar)": frame["p_exact"].map(fmt_p),
    })


def display_values(frame: pd.DataFrame) -> pd.DataFrame:
    """Two columns, quantity and a number (2 decimals)."""
    out = frame.copy()
    out[out.columns[1]] = out[out.columns[1]].map(lambda v: fmt(v, 2))
    return out


def display_floor(frame: pd.DataFrame, unit: str) -> pd.DataFrame:
    def count(v, never: str) -> str:
        return never if v == math.inf else ("–" if not np.isfinite(v) else f"{int(v)}")

    return pd.DataFrame({
        f"difference ({unit})": frame["difference"].map(lambda v: f"{v:g}"),
        "seed pairs needed (test images fixed)": frame["seeds_needed"].map(
            lambda v: count(v, "no number of seeds reaches it")),
        "test images needed at the current seeds": frame["images_needed"].map(
            lambda v: count(v, "none: the seed term alone is too large")),
    })


def display_model_table(model: ModelTable) -> pd.DataFrame:
    frame = model.numeric.copy()
    frame["cell"] = [fmt_pm(a, b) for a, b in zip(frame["mean"], frame["sd"], strict=True)]
    wide = frame.pivot(index="metric", columns="backbone", values="cell")
    order = list(dict.fromkeys(frame["metric"]))
    wide = wide.loc[order, list(dict.fromkeys(frame["backbone"]))]
    n = frame.groupby("backbone", sort=False)["n"].max()
    wide.loc["n seeds"] = [str(n[b]) for b in wide.columns]
    wide = wide.loc[["n seeds", *order]]
    wide.columns.name = None
    return wide.rename_axis("metric (%)").reset_index()


def _effect_intervals(frame: pd.DataFrame, level: str) -> dict[str, list[str]]:
    """The seed-only columns (pooled residual of the cell-means model) and, where per-image
    predictions exist, the columns over seeds + test images."""
    out = {f"{level} CI {SEEDS_ONLY} (pooled)": [fmt_ci(a, b) for a, b in
                                                  zip(frame["low"], frame["high"], strict=True)],
           f"p {SEEDS_ONLY}": frame["p"].map(fmt_p).tolist(),
           f"p {SEEDS_ONLY} (Holm)": frame["p_holm"].map(fmt_p).tolist()}
    if "total_low" in frame and frame["total_low"].notna().any():
        out |= {f"{level} CI {SEEDS_AND_IMAGES}": [fmt_ci(a, b) for a, b in
                                                    zip(frame["total_low"], frame["total_high"], strict=True)],
                f"p {SEEDS_AND_IMAGES} (Holm)": frame["p_total_holm"].map(fmt_p).tolist()}
    return out


def display_effects(main: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    level = f"{settings.confidence:.0%}"
    unit = settings.unit or "units"
    return pd.DataFrame({
        "factor": main["factor"].map(factor_labels()),
        "effect": main["level"] + " − " + main["reference"],
        f"estimate ({unit})": main["estimate"].map(fmt),
        **_effect_intervals(main, level),
    })


def display_verdicts(verdicts: list, pooled: pd.DataFrame) -> pd.DataFrame:
    """The report's first table: one row per claim (stats.verdicts.Verdict), in pp, with the
    pooled interval of the same claim (stats.mixed.pooled_intervals) as the check."""
    check = pooled.set_index("claim") if len(pooled) else pd.DataFrame(columns=["low", "high"])
    return pd.DataFrame({
        "claim": [v.claim for v in verdicts],
        "verdict": [f"**{v.verdict}**" for v in verdicts],
        "estimate (pp)": [fmt(100 * v.estimate) for v in verdicts],
        "interval (pp)": [fmt_ci(100 * v.low, 100 * v.high, 2) for v in verdicts],
        "covers": [f"{v.confidence:.1%} over seeds + test images" for v in verdicts],
        "seeds": [v.seeds for v in verdicts],
        "more seeds to resolve": ["–" if v.more_seeds == 0 or math.isnan(v.more_seeds)
                                  else "no number (test images limit)" if math.isinf(v.more_seeds)
                                  else f"{v.more_seeds:.0f}" for v in verdicts],
        "pooled check (pp)": [fmt_ci(100 * check.at[v.claim, "low"], 100 * check.at[v.claim, "high"], 2)
                              if v.claim in check.index else "–" for v in verdicts],
    })


def display_interactions(inter: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    level = f"{settings.confidence:.0%}"
    unit = settings.unit or "units"
    return pd.DataFrame({
        "interaction": (inter["factor_a"].map(factor_labels()) + " × "
                        + inter["factor_b"].map(factor_labels())),
        "contrast": ("(" + inter["level_a"] + " − " + inter["reference_a"] + ") × ("
                     + inter["level_b"] + " − " + inter["reference_b"] + ")"),
        f"difference of differences ({unit})": inter["estimate"].map(fmt),
        **_effect_intervals(inter, level),
    })


def display_anova(anova: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "term": anova["term"].map(lambda t: " × ".join(factor_labels().get(p, p)
                                                        for p in t.split(":"))),
        "sum of squares": anova["sum_sq"].map(lambda v: fmt(v, 2)),
        "df": anova["df"].map(lambda v: fmt(v, 0)),
        "F": anova["F"].map(lambda v: fmt(v, 2)),
        "p": anova["p"].map(fmt_p),
    })


def display_power(power: pd.DataFrame) -> pd.DataFrame:
    def cell(quantity: str, value) -> str:
        if quantity.startswith("seeds") or quantity in (DF_ROW, POOLED_ROW):
            return "–" if not np.isfinite(value) else f"{int(value)}"
        return fmt(value, 2)
    return pd.DataFrame({
        "quantity": power["quantity"],
        "unpaired (two-sample t-test)": [cell(q, v) for q, v in zip(power["quantity"],
                                                                  power["unpaired"], strict=True)],
        "paired seeds (paired t-test)": [cell(q, v) for q, v in zip(power["quantity"],
                                                                  power["paired"], strict=True)],
    })


def display_excluded(left: pd.DataFrame) -> pd.DataFrame:
    out = left.rename(columns=factor_labels()).copy()
    out["config_key"] = out["config_key"].astype(str).str[:12]
    return out


_LATEX = {"Δ": r"$\Delta$", "±": r"$\pm$", "−": "$-$", "×": r"$\times$", "–": "--",
          "α": r"$\alpha$", "≥": r"$\geq$", "<": r"$<$"}


def to_markdown(shown: pd.DataFrame) -> str:
    """A display table as Markdown, values kept as formatted (no re-parsing of numbers)."""
    return shown.to_markdown(index=False, disable_numparse=True)


def to_latex(shown: pd.DataFrame) -> str:
    """A display table as a LaTeX tabular (booktabs), with its symbols in math mode."""
    text = shown.to_latex(index=False, escape=True)
    for char, macro in _LATEX.items():
        text = text.replace(char, macro)
    return text


def select_levels(levels: Mapping[str, object] | None) -> dict[str, str | None]:
    """report.baseline as {factor: level or None}; a YAML/CLI boolean means on/off."""
    def level(v: object) -> str | None:
        if isinstance(v, bool):
            return "on" if v else "off"
        return None if v is None else str(v)

    return {str(k): level(v) for k, v in dict(levels or {}).items()}
