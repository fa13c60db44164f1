"""report.md: the plain-language summary, the tables (Markdown) and the embedded figures."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xray_ablate.report import tables as T
from xray_ablate.report.runs import Selection


@dataclass
class Content:
    """Everything the report shows; files are names relative to the report folder."""

    selection: Selection
    settings: T.Settings
    baseline_label: str
    baseline_levels: str  # the requested levels, "factor=level, ..." or "any"
    baseline_source: str  # where the requested levels came from, in words
    warnings: list[str]  # mixed code versions or devices, possible patient leakage
    notes: list[str]  # selection, dedup, integrity and baseline remarks
    reference: dict
    n_runs: int
    run_table: pd.DataFrame
    power: pd.DataFrame
    excluded: pd.DataFrame
    model: T.ModelTable | None
    factorial: T.Factorial | None
    factorial_note: str
    figures: dict[str, str] = field(default_factory=dict)  # title -> png file
    table_files: dict[str, tuple[str, str]] = field(default_factory=dict)  # title -> (csv, tex)


def _md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


def summary(c: Content) -> list[str]:
    """Plain-language findings, as Markdown blocks: which differences stand out from seed noise."""
    s, table = c.settings, c.run_table
    unit = s.unit or "units"
    n, sd = T.baseline_sd(table, s)
    pooled, pooled_df, pooled_k = T.pooled_sd(table, s)
    blocks = []
    if np.isfinite(sd):
        text = (f"**Run-to-run variability:** the baseline's {T.metric_title(s.metric)} "
                f"varies by {sd:.2f} {unit} from seed to seed (sd over {n} seeds)")
        if pooled_k > 1:
            text += (f"; pooled over the {pooled_k} configurations with at least 2 seeds, the "
                     f"seed-to-seed sd is {pooled:.2f} {unit} (df = {pooled_df})")
        blocks.append(text + ".")
    elif np.isfinite(pooled):
        blocks.append(f"**Run-to-run variability:** the baseline has {n} seed(s); pooled over the "
                      f"{pooled_k} configuration(s) with at least 2 seeds, the seed-to-seed sd is "
                      f"{pooled:.2f} {unit} (df = {pooled_df}).")
    else:
        blocks.append(f"**Run-to-run variability:** unknown, no configuration has 2 seeds or more "
                      f"(the baseline has {n}); run at least 2 (better 5 or more) seeds per "
                      "configuration.")
    groups: dict[str, list[str]] = {"yes": [], "no": [], "untestable": []}
    for _, row in table.iloc[1:].iterrows():
        delta = f"{row['delta']:+.2f}" if np.isfinite(row["delta"]) else "–"
        text = f"{row['config']}: Δ = {delta} {unit}"
        if not np.isfinite(row["p_holm"]):
            groups["untestable"].append(f"{text} (not testable: {row['note'] or 'no spread'})")
            continue
        text += (f" {T.fmt_ci(row['delta_low'], row['delta_high'], 2)}, Holm p = "
                 f"{T.fmt_p(row['p_holm'])}, P(improvement) = {row['p_improvement']:.2f}")
        groups["yes" if row["p_holm"] < s.alpha else "no"].append(text)
    level = f"{s.confidence:.0%}"
    heads = {"yes": f"**Distinguishable from seed noise** (Holm-corrected p < {s.alpha:g}; Δ with "
                    f"its {level} CI):",
             "no": "**Not distinguishable from seed noise** with these seeds:",
             "untestable": "**Not testable:**"}
    for group, items in groups.items():
        if items:
            blocks += [heads[group], "\n".join(f"- {t}" for t in items)]
    if len(table) == 1:
        blocks.append("Only one configuration: nothing to compare with the baseline.")
    blocks += _power_summary(c, n)
    if c.factorial is not None:
        main = c.factorial.main
        strong = main[main["p_holm"] < s.alpha]
        if len(strong):
            blocks.append("**Main effects distinguishable from seed noise:** " + "; ".join(
                f"{T.FACTOR_LABELS[r.factor]} {r.level} − {r.reference} = {r.estimate:+.2f} {unit}"
                for r in strong.itertuples()) + ".")
        elif main["p"].notna().any():
            blocks.append("**Main effects:** none is distinguishable from seed noise.")
        else:
            blocks.append("**Main effects:** not testable, each factor combination has a single "
                          "run (no seed replication).")
    return blocks


def _power_summary(c: Content, n: int) -> list[str]:
    """The power sentence for the test behind Δ: paired when the seeds pair, else unpaired (both
    when the rows mix them, the unpaired one for planning when nothing was tested)."""
    s = c.settings
    unit = s.unit or "units"
    power = c.power.set_index("quantity")
    used = T.delta_tests(c.run_table)
    rows = c.run_table["test"].iloc[1:].value_counts()
    columns = ([("paired", "paired t-test over seed-matched differences, as used for Δ in "
                           f"{rows['paired t']} row(s)")] if "paired t" in used else [])
    if "Welch t" in used or not columns:
        how = (f"Welch's t-test gave Δ in {rows['Welch t']} row(s)" if "Welch t" in used
               else "for planning")
        columns.append(("unpaired", f"two-sample t-test, {how}"))
    blocks = []
    for column, what in columns:
        mdd = power.loc[T.mdd_row(n, s), column]
        if not np.isfinite(mdd):
            continue
        sd = power.loc[T.SD_ROW.format(unit), column]
        df, k = int(power.loc[T.DF_ROW, column]), int(power.loc[T.POOLED_ROW, column])
        sd_text = ("sd of the paired differences vs the baseline" if column == "paired"
                   else "seed-to-seed sd") + f" {sd:.2f} {unit}, pooled over {k} configuration(s), df = {df}"
        needed = [f"{q.removeprefix('seeds needed to detect ')}: {int(v)}"
                  for q, v in power[column].items()
                  if str(q).startswith("seeds needed") and np.isfinite(v)]
        seeds = "seed pairs" if column == "paired" else "seeds per configuration"
        blocks.append(f"**Power ({column}):** with {n} {seeds}, a true difference smaller than "
                      f"about {mdd:.2f} {unit} is detected with less than {s.power:.0%} power "
                      f"({what}, α = {s.alpha:g}; {sd_text}). {seeds.capitalize()} needed: "
                      f"{'; '.join(needed)}.")
    return blocks


def methods(c: Content) -> list[str]:
    s = c.settings
    level = f"{s.confidence:.0%}"
    return [
        ("- Values are in percent, differences in percentage points (pp); sd is the sample sd over "
         "seeds (ddof = 1). Only FINISHED runs count, and the latest run per configuration and "
         "seed."),
        (f"- {level} CI (t): Student-t interval of the mean over seeds. {level} CI (bootstrap): "
         f"percentile bootstrap of the mean over seeds ({s.n_resamples} resamples, seed "
         f"{s.bootstrap_seed}); with few seeds it is narrower than it should be, prefer the "
         f"t-interval."),
        ("- Δ = configuration − baseline with the CI of its test: paired t-test over the seeds "
         "both configurations ran (equal seeds share a split) when at least two seeds pair, else "
         "Welch's t-test. p (Holm): Holm correction across all rows."),
        ("- P(improvement): the probability that a random run of the configuration beats a random "
         "run of the baseline (common-language effect size over all pairs of runs, ties count "
         "one half; Mann–Whitney U / (n₁n₂)). 0.5 means no difference; unlike p it does not shrink "
         "with more seeds."),
        (f"- Power: two-sided t-tests at α = {s.alpha:g} and {s.power:.0%} power at the "
         "baseline's number of seeds. Unpaired: statsmodels TTestIndPower with the pooled "
         "within-configuration sd (the residual sd over every configuration with at least 2 "
         "seeds, df = Σ(n − 1)). Paired: TTestPower with the pooled sd of the seed-matched "
         "differences against the baseline (df = Σ(pairs − 1)). The summary quotes the one "
         "that matches the test used for Δ."),
        ("- Main effects: mean of (level − reference) over every combination of the other crossed "
         "factors; interactions: difference of differences, averaged likewise; both as contrasts "
         "of the cell-means OLS model (statsmodels), whose residual is the pooled seed-to-seed "
         "variance. ANOVA: type III with sum coding on the same saturated model (every "
         "interaction of the crossed factors), so its residual is the same seed-to-seed variance "
         "and its main-effect p-values equal the contrasts'; rows for main effects and two-way "
         "interactions. Without seed replication (one run per combination) there is no residual: "
         "effects come without CI or p and the ANOVA without F or p."),
        ("- What the intervals cover: with a fixed split every run is scored on the same test "
         "set, so CIs, tests and power describe training-seed variability on that one test set; "
         "the sampling variability of the test set itself (which images it holds) is not "
         "included. Each run logs its per-image predictions as the artifact `predictions.csv` "
         "(image_id, label, prob_bacterial, prob_viral, prob_covid, prob_healthy) for McNemar's "
         "test or an image-level bootstrap. An interval of zero width means every seed gave the "
         "same value (no seed-to-seed spread was observed), not that the value is exact."),
        ("- The run table's t-interval of a fraction (accuracy, F1, ...) is shown clipped to "
         "[0, 100] % (the note says where); run_table.csv keeps the unclipped bounds."),
    ]


def render(c: Content) -> str:
    s, sel = c.settings, c.selection
    ref = c.reference
    out = [f"# Ablation report: {sel.name}", ""]
    out += [f"MLflow experiment `{sel.experiment}`, {sel.by}; {c.n_runs} runs of "
            f"{len(c.run_table)} configurations. Baseline: **{c.baseline_label}** (requested "
            f"levels {c.baseline_levels}, from {c.baseline_source}). Dataset "
            f"fingerprint `{ref['fingerprint']}`, split mode {ref['split_mode']} ("
            + (f"manifest `{ref['split_hash']}`" if ref["split_mode"] != "per_seed"
               else f"split seed base {ref['split_seed']}, paired by seed") + ").", ""]
    if c.warnings:
        out += ["## Warnings", ""] + [f"- **Warning:** {w}" for w in c.warnings] + [""]
    out += ["## Summary", ""] + [block + "\n" for block in summary(c)]
    if c.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in c.notes] + [""]
    out += [f"## Run table ({T.metric_title(s.metric)})", "", _md(T.display_run_table(c.run_table, s)),
            ""]
    out += _figure(c, "Δ vs baseline") + _figure(c, "Runs per configuration")
    if len(c.excluded):
        intro = ("These runs are not comparable with the reference (another dataset or split) "
                 "and appear in no table:")
        out += ["## Runs left out", "", intro, "", _md(T.display_excluded(c.excluded)), ""]
    if c.model is not None:
        out += ["## Backbones", ""] + [f"- {n}" for n in c.model.notes]
        out += ["", _md(T.display_model_table(c.model)), ""]
    out += ["## Factorial analysis", ""]
    if c.factorial is None:
        out += [c.factorial_note, ""]
    else:
        f = c.factorial
        out += [f"- {n}" for n in f.notes] + [""]
        out += ["### Main effects", "", _md(T.display_effects(f.main, s)), ""]
        if len(f.interactions):
            out += ["### Two-way interactions", "", _md(T.display_interactions(f.interactions, s)),
                    ""]
        out += ["### ANOVA", ""]
        if not f.anova["F"].notna().any():
            out += ["No F or p: without seed replication (one run per factor combination) the "
                    "model has no residual degrees of freedom, so there is no seed-to-seed "
                    "variance to test against; the sums of squares are shown.", ""]
        out += [_md(T.display_anova(f.anova)), ""]
    out += ["## Power", "", _md(T.display_power(c.power)), ""]
    out += _figure(c, "Learning curves", "##")
    out += ["## Methods", ""] + methods(c) + [""]
    out += ["## Files", ""] + [f"- {title}: [CSV]({csv})" + (f", [LaTeX]({tex})" if tex else "")
                               for title, (csv, tex) in c.table_files.items()] + [""]
    return "\n".join(out)


def _figure(c: Content, title: str, heading: str = "###") -> list[str]:
    if title not in c.figures:
        return []
    return [f"{heading} {title}", "", f"![{title}]({c.figures[title]})", ""]
