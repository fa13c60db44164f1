"""The report's tables as text: numbers formatted, interval headers that say what they cover,
Markdown and LaTeX. Each ``display_*`` takes the numeric frame of report/tables.py."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from xray_ablate.config.factors import factor_labels, factor_names
from xray_ablate.report.tables import (
    DF_ROW,
    MIN_SEEDS_RESAMPLED,
    POOLED_ROW,
    SECONDARY,
    ModelTable,
    Settings,
    f1_columns,
    metric_scale,
)
from xray_ablate.stats.verdicts import Verdict


def metric_title(metric: str) -> str:
    return metric.replace("_", " ")


def number(value, digits: int = 1) -> str:
    """``value`` to ``digits`` decimals; what rounds to zero is 0.0, not -0.0 (a sign it has not got)."""
    return f"{value:z.{digits}f}"


def fmt(value, digits: int = 1) -> str:
    return "–" if value is None or not np.isfinite(value) else number(value, digits)


def fmt_pm(mean, sd, digits: int = 1) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    return number(mean, digits) + (f" ± {number(sd, digits)}" if np.isfinite(sd) else "")


def fmt_ci(low, high, digits: int = 1, percent: bool = False) -> str:
    """``percent``: the interval of a percentage, shown cut to [0, 100] (a t or normal interval
    over few seeds can overshoot; the CSV files keep the uncut bounds)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "–"
    if percent:
        low, high = max(low, 0.0), min(high, 100.0)
    return f"[{number(low, digits)}, {number(high, digits)}]"


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
    keeps the unclipped bounds) and a row's note says so where any of its shown intervals was.
    Headers say what each interval covers: seeds only (one fixed test set) or seeds and test
    images. The bootstrap CI and P(improvement) show "–" below MIN_SEEDS_RESAMPLED seeds per side.
    ``references`` (chance, majority class) are appended as rows; ``verdicts`` give each
    configuration's verdict against the baseline (its claim "<config> − baseline")."""
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
    secondary = [metric for metric in SECONDARY if metric != m and f"{metric}_mean" in table]
    shown_cut = [(table[f"{metric}_ci_total_low"], table[f"{metric}_ci_total_high"]) for metric in secondary]
    if fraction:
        shown_cut += [(t_low, t_high), (total_low, total_high)]
    clipped = pd.Series(False, index=notes.index)
    for low, high in shown_cut:
        clipped |= np.array([overshoots(a, b) for a, b in zip(low.astype(float), high.astype(float), strict=True)])
    notes = notes.where(~clipped, [f"{n}; {CLIPPED}" if n else CLIPPED for n in notes])
    out[f"{level} CI {SEEDS_ONLY} (t)"] = [fmt_ci(a, b, percent=fraction) for a, b in zip(t_low, t_high, strict=True)]
    out[f"{level} CI {SEEDS_AND_IMAGES}"] = [fmt_ci(a, b, percent=fraction)
                                              for a, b in zip(total_low, total_high, strict=True)]
    out[f"{level} CI {SEEDS_ONLY} (bootstrap)"] = [
        "–" if f else fmt_ci(a, b)
        for f, a, b in zip(few, table[f"{m}_boot_low"], table[f"{m}_boot_high"], strict=True)]
    for metric in secondary:
        out[f"{metric_title(metric)} (%) [{level} CI {SEEDS_AND_IMAGES}]"] = [
            fmt(v) + ("" if fmt_ci(a, b) == "–" else f" {fmt_ci(a, b, percent=True)}") for v, a, b in
            zip(table[f"{metric}_mean"], table[f"{metric}_ci_total_low"],
                table[f"{metric}_ci_total_high"], strict=True)]
    for column, label in f1_columns(settings.prefix):
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
        for column, label in f1_columns(settings.prefix):
            key = column.replace(settings.prefix, "test", 1)
            if key in references:
                ref[label + " (%)"] = (references[key] * 100).map(fmt)
        if "wilson_low" in references and m == "test_accuracy":  # a trained reference: one model, no seeds
            ref[f"{level} CI {SEEDS_AND_IMAGES}"] = [
                "" if not np.isfinite(lo) else f"{fmt_ci(100 * lo, 100 * hi)} Wilson, test images only"
                for lo, hi in zip(references["wilson_low"], references["wilson_high"], strict=True)]
        if "note" in references:
            ref["note"] = references["note"].fillna("")
        out = pd.concat([out.astype(object), ref.astype(object)], ignore_index=True).fillna("")
    return out


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
        "more seeds for even odds to resolve": [
            "–" if v.more_seeds == 0 or math.isnan(v.more_seeds)
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
    """A display table as Markdown, values kept as formatted (no re-parsing of numbers). A "|" or a
    line break in a name from the data (a metadata level, an attribute) would end a cell or a row:
    they are escaped."""
    def cell(value):
        if not isinstance(value, str):
            return value
        return value.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ").replace("\r", " ")

    clean = shown.rename(columns=cell).map(cell) if len(shown.columns) else shown
    return clean.to_markdown(index=False, disable_numparse=True)


def to_latex(shown: pd.DataFrame) -> str:
    """A display table as a LaTeX tabular (booktabs), with its symbols in math mode."""
    text = shown.to_latex(index=False, escape=True)
    for char, macro in _LATEX.items():
        text = text.replace(char, macro)
    return text


