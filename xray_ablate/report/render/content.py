"""The report's content: what it computed (Content), the plain-language summary, the methods, and
the whole document as blocks (render/blocks.py) for every renderer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xray_ablate.config.factors import factor_labels
from xray_ablate.evaluation import PREDICTION_COLUMNS
from xray_ablate.report.audit import AuditSummary, audit_section, summary_blocks
from xray_ablate.report.canary import CanaryResult, canary_section, canary_warning
from xray_ablate.report.confounds import Confounds, references_section, subgroups_section, table_frames
from xray_ablate.report.curves import Curves, curve_frames, curve_section
from xray_ablate.report.images import variance_table
from xray_ablate.report.render.blocks import Block, Figure, Heading, Table, Text, bullets
from xray_ablate.report.render.tables import (
    display_anova,
    display_effects,
    display_excluded,
    display_floor,
    display_interactions,
    display_mcnemar,
    display_model_table,
    display_power,
    display_run_table,
    display_values,
    display_verdicts,
    fmt,
    fmt_ci,
    fmt_p,
    metric_title,
)
from xray_ablate.report.runs import Selection
from xray_ablate.report.tables import (
    DF_ROW,
    MIN_SEEDS_RESAMPLED,
    POOLED_ROW,
    SD_ROW,
    Factorial,
    ModelTable,
    Settings,
    baseline_sd,
    delta_tests,
    mdd_row,
    pooled_sd,
    reference_rows,
)
from xray_ablate.stats.intervals import VarianceSplit
from xray_ablate.stats.verdicts import verdict_table


@dataclass
class Content:
    """Everything the report shows; files are names relative to the report folder."""

    selection: Selection
    settings: Settings
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
    model: ModelTable | None
    factorial: Factorial | None
    factorial_note: str
    learning_warning: str | None = None  # "k of n runs did not learn: ..."
    references: pd.DataFrame = field(default_factory=pd.DataFrame)  # chance, majority class
    mcnemar: pd.DataFrame = field(default_factory=pd.DataFrame)  # per seed pair vs the baseline
    audit: AuditSummary | None = None  # where the models look, when runs were audited
    variance: VarianceSplit | None = None  # the baseline's, when it has predictions
    floor: pd.DataFrame | None = None  # power targets with the test-sample floor
    floor_sd: tuple[float, float] = (float("nan"), float("nan"))  # (seed sd, image SE) of Δ used
    curves: Curves = field(default_factory=Curves)  # learning curve, per-class recall
    figures: dict[str, str] = field(default_factory=dict)  # title -> png file
    table_files: dict[str, tuple[str, str]] = field(default_factory=dict)  # title -> (csv, tex)
    confounds: Confounds | None = None  # references, source probe, subgroups, external sets
    verdicts: list = field(default_factory=list)  # stats.verdicts.Verdict per claim, the report's first table
    pooled: pd.DataFrame = field(default_factory=pd.DataFrame)  # stats.mixed.pooled_intervals: the check
    verdict_note: str = ""  # how the verdicts were reached, or why there are none
    canary: CanaryResult | None = None  # the positive control, with audit.canary=true


def summary(c: Content) -> list[str]:
    """Plain-language findings, as Markdown blocks: which differences stand out from seed noise."""
    s, table = c.settings, c.run_table
    unit = s.unit or "units"
    n, sd = baseline_sd(table, s)
    pooled, pooled_df, pooled_k = pooled_sd(table, s)
    blocks = []
    if np.isfinite(sd):
        text = (f"**Run-to-run variability:** the baseline's {metric_title(s.metric)} "
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
    total = table["p_total_holm"].iloc[1:].notna().any()
    noise = "seed and test-sample noise" if total else "seed noise"
    groups: dict[str, list[str]] = {"yes": [], "no": [], "untestable": []}
    for _, row in table.iloc[1:].iterrows():
        delta = f"{row['delta']:+z.2f}" if np.isfinite(row["delta"]) else "–"
        text = f"{row['config']}: Δ = {delta} {unit}"
        if np.isfinite(row["p_total_holm"]):  # the verdict uses the interval over seeds + images
            p, low, high = row["p_total_holm"], row["delta_ci_total_low"], row["delta_ci_total_high"]
            basis = ""
        else:
            p, low, high = row["p_holm"], row["delta_low"], row["delta_high"]
            basis = " (seeds only: no predictions.csv)" if total else ""
        if not np.isfinite(p):
            groups["untestable"].append(f"{text} (not testable: {row['note'] or 'no spread'})")
            continue
        text += f" {fmt_ci(low, high, 2)}, Holm p = {fmt_p(p)}{basis}"
        if row["n"] >= MIN_SEEDS_RESAMPLED and table["n"].iloc[0] >= MIN_SEEDS_RESAMPLED:
            text += f", P(improvement) = {row['p_improvement']:.2f}"
        groups["yes" if p < s.alpha else "no"].append(text)
    level = f"{s.confidence:.0%}"
    over = "over seeds and test images" if total else "over seeds"
    heads = {"yes": f"**Distinguishable from {noise}** (Holm-corrected p < {s.alpha:g}; Δ with "
                    f"its {level} CI {over}):",
             "no": f"**Not distinguishable from {noise}** with these seeds and test images:"
                   if total else "**Not distinguishable from seed noise** with these seeds:",
             "untestable": "**Not testable:**"}
    for group, items in groups.items():
        if items:
            blocks += [heads[group], "\n".join(f"- {t}" for t in items)]
    if (table["n"].lt(MIN_SEEDS_RESAMPLED).any() and len(table) > 1):
        blocks.append(f"P(improvement) and the bootstrap CI are shown only with at least "
                      f"{MIN_SEEDS_RESAMPLED} seeds per side (with fewer, a resampled or pairwise "
                      "figure over seeds is too coarse to read).")
    blocks += _variance_summary(c)
    blocks += summary_blocks(c.audit)
    if len(table) == 1:
        blocks.append("Only one configuration: nothing to compare with the baseline.")
    blocks += _power_summary(c, n)
    if c.factorial is not None:
        main = c.factorial.main
        total = "p_total_holm" in main and main["p_total_holm"].notna().any()
        noise = "seed and test-sample noise" if total else "seed noise"
        strong = main[main["p_total_holm" if total else "p_holm"] < s.alpha]
        if len(strong):
            covers = f"; {s.confidence:.0%} CI over seeds and test images" if total else ""
            blocks.append(f"**Main effects distinguishable from {noise}** (Holm p < {s.alpha:g}{covers}): "
                          + "; ".join(
                              f"{factor_labels()[r.factor]} {r.level} − {r.reference} = {r.estimate:+z.2f} {unit}"
                              + (f" {fmt_ci(r.total_low, r.total_high, 2)}" if total else "")
                              for r in strong.itertuples()) + ".")
        elif main["p"].notna().any():
            blocks.append(f"**Main effects:** none is distinguishable from {noise}.")
        else:
            blocks.append("**Main effects:** not testable, each factor combination has a single "
                          "run (no seed replication).")
    return blocks


def _variance_summary(c: Content) -> list[str]:
    """Which source of uncertainty dominates, what more seeds or images buy, and the targets no
    number of seeds reaches."""
    v, unit = c.variance, c.settings.unit or "units"
    if v is None:
        return []
    other = "test images" if v.dominant == "seeds" else "seeds"
    blocks = [f"**Where the uncertainty comes from (baseline):** seed sd {v.seed_sd:.2f} {unit}, "
              f"test-sample sd of one run {v.test_sample_sd:.2f} {unit} ({v.n_images} test images). "
              f"SE of the mean over {v.n_seeds} seeds: {v.se_seed:.2f} from the seeds, "
              f"{v.se_image:.2f} from the test images, {v.se_total:.2f} in total: the {v.dominant} "
              f"dominate, so more {v.dominant} help most. Twice the seeds: SE {v.se_with(seeds=2):.2f}; "
              f"twice the test images: {v.se_with(images=2):.2f}"
              + (f"; no number of seeds gets below {v.se_image:.2f} {unit} on this test set (more "
                 f"{other} help less)." if v.se_image > 0 else
                 "; the test images add no variance beyond what the seeds' spread already holds.")]
    for row in c.floor.itertuples():
        if row.seeds_needed == np.inf:
            images = (f"about {int(row.images_needed)} test images would, at {v.n_seeds} seeds"
                      if np.isfinite(row.images_needed) else
                      f"more test images alone would not, at {v.n_seeds} seeds")
            blocks.append(f"**Detecting {row.difference:g} {unit}:** no number of seeds reaches it "
                          f"(the test-sample SE of Δ alone, {c.floor_sd[1]:.2f} {unit}, is too "
                          f"large); {images}.")
    return blocks


def _power_summary(c: Content, n: int) -> list[str]:
    """The power sentence for the test behind Δ: paired when the seeds pair, else unpaired (both
    when the rows mix them, the unpaired one for planning when nothing was tested)."""
    s = c.settings
    unit = s.unit or "units"
    power = c.power.set_index("quantity")
    used = delta_tests(c.run_table)
    rows = c.run_table["test"].iloc[1:].value_counts()
    columns = ([("paired", "paired t-test over seed-matched differences, as used for Δ in "
                           f"{rows['paired t']} row(s)")] if "paired t" in used else [])
    if "Welch t" in used or not columns:
        how = (f"Welch's t-test gave Δ in {rows['Welch t']} row(s)" if "Welch t" in used
               else "for planning")
        columns.append(("unpaired", f"two-sample t-test, {how}"))
    blocks = []
    for column, what in columns:
        mdd = power.loc[mdd_row(n, s), column]
        if not np.isfinite(mdd):
            continue
        sd = power.loc[SD_ROW.format(unit), column]
        df, k = int(power.loc[DF_ROW, column]), int(power.loc[POOLED_ROW, column])
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
         "effects come without CI or p and the ANOVA without F or p. Over seeds + test images "
         "(where every run logged predictions.csv): the same contrast taken per seed and per "
         "test image over the seeds every cell ran, with the interval of Δ below (its seed term "
         "from the seed-matched contrasts, df = seeds − 1: with few seeds usually wider than the "
         "pooled one, not always, as the seed-matched contrasts can vary less than the pooled "
         "residual); Holm within main effects and within interactions."),
        ("- What the intervals cover. **Over seeds** (t, bootstrap, paired/Welch Δ): with a "
         "fixed split every run is scored on the same test set, so these CIs, tests and power "
         "describe training-seed variability on that one test set; the sampling variability of "
         "the test set itself (which images it holds) is not included. **Over seeds + test "
         "images**: the accuracy a configuration would have on new test images from the same "
         "population, over new seeds: variance = var(run metrics)/n + the image term "
         "(var over images of each image's seed-averaged score / N; images shared by every seed "
         "count once, each seed's own images count with split.vary_with_seed), less the "
         "seed × image residual counted in both; t quantile at the Welch–Satterthwaite df, never "
         "narrower than the seed-only interval. Δ: the same on seed-matched run differences and "
         "per-image differences. Balanced accuracy is a weighted mean of per-image correctness; "
         "macro AUROC and ECE (10 equal-width bins) use jackknife pseudo-values per image. "
         f"Each run logs its per-image predictions as the artifact `predictions.csv` "
         f"({', '.join(PREDICTION_COLUMNS)}); runs without it get "
         "seed-only intervals. An interval of zero width means every seed gave the same value "
         "(no seed-to-seed spread was observed), not that the value is exact."),
        ("- McNemar: per seed, the configuration's and the baseline's runs on the same test "
         "images; exact two-sided binomial test of the discordant images (right in one, wrong in "
         "the other). Equal accuracy can hide many images predicted differently."),
        ("- Did it learn? A run that gives one class to ≥ 95 % of test images, or whose final "
         "training loss is ≥ 0.95 ln(classes), did not learn (xray_ablate.evaluation."
         "learning_check; the tag xray.learned when training recorded it, else derived from "
         "predictions.csv and train_loss). Reference rows: chance (uniform guesses, 1/classes) "
         "and always predicting the training split's majority class."),
        ("- Intervals of a percentage (accuracy, recall, F1, AUROC, ...) are shown clipped to "
         "[0, 100] %: with few seeds a t interval can overshoot (the run table's note says where); "
         "the CSV files keep the unclipped bounds."),
    ]


TableFile = tuple[str, pd.DataFrame, pd.DataFrame]  # file stem, the numbers (CSV), the text (LaTeX)


def table_files(c: Content) -> dict[str, TableFile]:
    """Every table the report writes as files, by title: its numbers and its formatted text."""
    s = c.settings
    files: dict[str, TableFile] = {}
    if c.verdicts:
        numeric = verdict_table(c.verdicts).merge(
            c.pooled.add_prefix("pooled_").rename(columns={"pooled_claim": "claim"}), on="claim", how="left")
        files["Verdicts"] = ("verdicts", numeric, display_verdicts(c.verdicts, c.pooled))
    files |= {"Run table": ("run_table", c.run_table, display_run_table(c.run_table, s, c.references, c.verdicts)),
              "Power": ("power", c.power, display_power(c.power))}
    if len(c.references):
        numeric = reference_rows(c.references, c.run_table, s)
        files["References (chance, majority class, trained references)"] = ("references", numeric, numeric.map(
            lambda v: fmt(v) if isinstance(v, float) else v))
    files |= table_frames(c.confounds)
    if len(c.mcnemar):
        files["McNemar"] = ("mcnemar", c.mcnemar, display_mcnemar(c.mcnemar))
    if c.variance is not None:
        unit = s.unit or "units"
        shown = variance_table(c.variance, unit)
        files["Variance decomposition"] = ("variance", shown, display_values(shown))
        files["Power with the test-sample floor"] = ("power_floor", c.floor, display_floor(c.floor, unit))
    if len(c.excluded):
        files["Runs left out"] = ("excluded", c.excluded, display_excluded(c.excluded))
    if c.model is not None:
        files["Backbones"] = ("model_table", c.model.numeric, display_model_table(c.model))
    if c.factorial is not None:
        f = c.factorial
        files["Main effects"] = ("main_effects", f.main, display_effects(f.main, s))
        if len(f.interactions):
            files["Interactions"] = ("interactions", f.interactions, display_interactions(f.interactions, s))
        files["ANOVA"] = ("anova", f.anova, display_anova(f.anova))
    return files | curve_frames(c.curves, s)


def document(c: Content) -> list[Block]:
    """The whole report as blocks: title, warnings, verdicts and the run table first, then every section."""
    s, sel = c.settings, c.selection
    ref = c.reference
    out: list[Block] = [Heading(f"Ablation report: {sel.name}", 1)]
    out.append(Text(
        f"MLflow experiment `{sel.experiment}`, {sel.by}; {c.n_runs} runs of "
        f"{len(c.run_table)} configurations. Baseline: **{c.baseline_label}** (requested "
        f"levels {c.baseline_levels}, from {c.baseline_source}). Dataset "
        f"fingerprint `{ref['fingerprint']}`, split mode {ref['split_mode']} ("
        + (f"manifest `{ref['split_hash']}`" if ref["split_mode"] != "per_seed"
           else f"split seed base {ref['split_seed']}, paired by seed") + ")."))
    # before any result: shortcut checks blind to a planted shortcut, runs that did not learn,
    # then runs that should not be compared
    warnings = [w for w in (canary_warning(c.canary), c.learning_warning) if w] + c.warnings
    if warnings:
        out += [Heading("Warnings"), bullets([f"**Warning:** {w}" for w in warnings])]
    out += [Heading("Verdicts")]
    if c.verdicts:
        out.append(Table(display_verdicts(c.verdicts, c.pooled)))
    out += [Text(c.verdict_note)]
    # the first screen: the verdicts, then each configuration's result, interval and verdict
    out += [Heading(f"Run table ({metric_title(s.metric)})"),
            Table(display_run_table(c.run_table, s, c.references, c.verdicts))]
    out += references_section(c.confounds)  # what the run table's results must beat, next to them
    out += [Heading("Summary")] + [Text(block) for block in summary(c)]
    if c.notes:
        out += [Heading("Notes"), bullets(c.notes)]
    out += _figure(c, "Δ vs baseline") + _figure(c, "Runs per configuration")
    out += curve_section(c.curves, s, c.figures)
    out += subgroups_section(c.confounds)
    if len(c.mcnemar):
        out += [Heading("Image-level comparisons (exact McNemar, per seed pair)"),
                Text("Each configuration's run against the baseline's run of the same seed, on the "
                       "same test images:"), Table(display_mcnemar(c.mcnemar))]
    out += audit_section(c.audit)
    out += canary_section(c.canary)
    if c.variance is not None:
        unit = s.unit or "units"
        out += [Heading("Variance decomposition (baseline)"),
                Table(display_values(variance_table(c.variance, unit))),
                Text(f"Power over seeds and test images (seed sd of Δ {c.floor_sd[0]:.2f} {unit}, "
                       f"test-sample SE of Δ {c.floor_sd[1]:.2f} {unit}; α = {s.alpha:g}, "
                       f"{s.power:.0%} power):"), Table(display_floor(c.floor, unit))]
    if len(c.excluded):
        out += [Heading("Runs left out"),
                Text("These runs are not comparable with the reference (another dataset or split) "
                       "and appear in no table:"), Table(display_excluded(c.excluded))]
    if c.model is not None:
        out += [Heading("Backbones"), bullets(c.model.notes), Table(display_model_table(c.model))]
    out.append(Heading("Factorial analysis"))
    if c.factorial is None:
        out.append(Text(c.factorial_note))
    else:
        f = c.factorial
        out += [bullets(f.notes)] if f.notes else []
        out += [Heading("Main effects", 3), Table(display_effects(f.main, s))]
        if len(f.interactions):
            out += [Heading("Two-way interactions", 3), Table(display_interactions(f.interactions, s))]
        out.append(Heading("ANOVA", 3))
        if not f.anova["F"].notna().any():
            out.append(Text("No F or p: without seed replication (one run per factor combination) the "
                              "model has no residual degrees of freedom, so there is no seed-to-seed "
                              "variance to test against; the sums of squares are shown."))
        out.append(Table(display_anova(f.anova)))
    out += [Heading("Power"), Table(display_power(c.power))]
    out += _figure(c, "Learning curves", 2)
    out += [Heading("Methods"), Text("\n".join(methods(c)))]
    out += [Heading("Files"), bullets([f"{title}: [CSV]({csv})" + (f", [LaTeX]({tex})" if tex else "")
                                           for title, (csv, tex) in c.table_files.items()])]
    return out


def _figure(c: Content, title: str, level: int = 3) -> list[Block]:
    if title not in c.figures:
        return []
    return [Heading(title, level), Figure(title, c.figures[title])]
