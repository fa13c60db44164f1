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
    blocks = []
    if np.isfinite(sd):
        blocks.append(f"**Run-to-run variability:** the baseline's {T.metric_title(s.metric)} "
                      f"varies by {sd:.2f} {unit} from seed to seed (sd over {n} seeds).")
    else:
        blocks.append(f"**Run-to-run variability:** unknown, the baseline has {n} seed(s); "
                      "run at least 2 (better 5 or more) seeds per configuration.")
    groups: dict[str, list[str]] = {"yes": [], "no": [], "untestable": []}
    for _, row in table.iloc[1:].iterrows():
        text = f"{row['config']}: Δ = {row['delta']:+.2f} {unit}"
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
    power = c.power.set_index("quantity")["unpaired"]
    mdd = power.iloc[1]
    if np.isfinite(mdd):
        needed = [f"{q.removeprefix('seeds needed to detect ')}: {int(v)}"
                  for q, v in power.iloc[2:].items() if np.isfinite(v)]
        blocks.append(f"**Power:** with {n} seeds per configuration, a true difference smaller "
                      f"than about {mdd:.2f} {unit} is detected with less than {s.power:.0%} power "
                      f"(two-sided t-test, α = {s.alpha:g}). Seeds per configuration needed "
                      f"(unpaired): {'; '.join(needed)}.")
    if c.factorial is not None:
        main = c.factorial.main
        strong = main[main["p_holm"] < s.alpha]
        if len(strong):
            blocks.append("**Main effects distinguishable from seed noise:** " + "; ".join(
                f"{T.FACTOR_LABELS[r.factor]} {r.level} − {r.reference} = {r.estimate:+.2f} {unit}"
                for r in strong.itertuples()) + ".")
        else:
            blocks.append("**Main effects:** none is distinguishable from seed noise.")
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
        (f"- Power: two-sided t-tests at α = {s.alpha:g} and {s.power:.0%} power (statsmodels "
         "TTestIndPower for unpaired seeds with the baseline sd; TTestPower for paired seeds with "
         "the median sd of the paired differences)."),
        ("- Main effects: mean of (level − reference) over every combination of the other crossed "
         "factors; interactions: difference of differences, averaged likewise; both as contrasts "
         "of the cell-means OLS model (statsmodels), whose residual is the pooled seed-to-seed "
         "variance. ANOVA: type II, main effects and two-way interactions, sum coding."),
    ]


def render(c: Content) -> str:
    s, sel = c.settings, c.selection
    ref = c.reference
    out = [f"# Ablation report: {sel.name}", ""]
    out += [f"MLflow experiment `{sel.experiment}`, {sel.by}; {c.n_runs} runs of "
            f"{len(c.run_table)} configurations. Baseline: **{c.baseline_label}**. Dataset "
            f"fingerprint `{ref['fingerprint']}`, split mode {ref['split_mode']} ("
            + (f"manifest `{ref['split_hash']}`" if ref["split_mode"] != "per_seed"
               else f"split seed base {ref['split_seed']}, paired by seed") + ").", ""]
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
        out += ["### ANOVA", "", _md(T.display_anova(f.anova)), ""]
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
