"""The report's saliency audit: where each configuration's models look, with intervals.

Reads each run's per-image audit (``audit/audit.csv``, written by xray_ablate.audit after
training): the share of attribution mass outside the lungs and in the border band, per method.
Per configuration: mean ± sd over seeds and the interval over seeds + audited images
(intervals.total_interval on seeds x images matrices of the per-image shares); per dataset level
(masked, raw): the same pooled over every run of that level, and raw − masked; the montages of
the baseline and of the configuration whose Grad-CAM outside share differs most from it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xray_ablate.data.canary import HOTSPOT_RATIO, PLANTED
from xray_ablate.report.images import METHOD_LABELS, SHARES
from xray_ablate.report.render.blocks import Block, Figure, Heading, Table, Text
from xray_ablate.report.render.tables import fmt, fmt_ci, fmt_p, fmt_pm, to_latex
from xray_ablate.stats import intervals
from xray_ablate.tracking import schema
from xray_ablate.tracking.reader import copy_artifact, csv_artifacts

MASK_FACTOR = "dataset"  # its levels masked / raw


@dataclass
class AuditSummary:
    """The audit tables of one report; montages are filled in when the report folder is written."""

    table: pd.DataFrame  # per configuration: config, config_key, n, images, <share>_{mean,sd,low,high}, uniform_*
    levels: pd.DataFrame  # per dataset level (masked, raw, raw − masked) pooled over runs, same columns
    montage_runs: dict[str, str]  # title -> run id whose montage is shown
    confidence: float = 0.95  # of every interval
    montages: dict[str, str] = field(default_factory=dict)  # title -> png file in the report folder
    # title -> how often that run's maps light a planted marker (planted_note), "" without one
    montage_notes: dict[str, str] = field(default_factory=dict)
    informative: dict[str, bool | None] = field(default_factory=dict)  # method -> informative()
    missed_canary: tuple[str, ...] = ()  # methods that did not find the canary's planted marker

    @property
    def gradcam_uninformative(self) -> bool:
        return self.informative.get("gradcam") is False

    @property
    def lead(self) -> str:
        return lead_method(self.informative)


def lead_method(informed: dict[str, bool | None]) -> str:
    """The method the report leads with: Grad-CAM, unless it is uninformative and another is not
    (the first such, in the order of config.choices.ATTRIBUTION_METHODS)."""
    if informed.get("gradcam") is not False:
        return "gradcam"
    return next((m for m in METHOD_LABELS if m != "gradcam" and informed.get(m)), "gradcam")


def audited_methods(audits: dict[str, pd.DataFrame]) -> list[str]:
    """The methods (audit.methods) whose shares the runs' audits hold."""
    return [m for m in METHOD_LABELS if any(f"outside_lung_{m}" in a.columns for a in audits.values())]


def shares_of(methods: list[str]) -> list[str]:
    """Their share columns (outside_lung_<method>, border_<method>)."""
    return [c for c in SHARES if c.rsplit("_", 1)[1] in methods]


# report.metric=audit_outside_lung: the outside-lung share of the method the audit leads with
LEAD_SHARE = "audit_outside_lung"


def lead_share(runs: pd.DataFrame, audits: dict[str, pd.DataFrame], confidence: float = 0.95,
               missed: Collection[str] = ()) -> str:
    """The metric LEAD_SHARE stands for in this report: audit_outside_lung_<the lead method>, judged
    on ``runs`` (each configuration and dataset level) as the audit section judges it."""
    keys = pd.unique(runs["config_key"])
    table = audit_table(runs, pd.DataFrame({"config": keys, "config_key": keys}), audits, confidence)
    return f"{LEAD_SHARE}_{lead_method(informative(table, level_table(runs, audits, confidence), missed))}"


def load_audits(run_ids) -> dict[str, pd.DataFrame]:
    """run id -> its per-image audit (image_id as str); runs without one are left out."""
    return csv_artifacts(run_ids, schema.AUDIT_CSV, dtype={"image_id": str})


def share_matrix(audits: dict[str, pd.DataFrame], run_ids: pd.Series, column: str) -> pd.DataFrame:
    """Rows ``run_ids``'s index (seeds, or run ids when pooling) x image ids: the per-image
    ``column`` in percent; NaN for an image a run did not audit (or an empty map)."""
    rows = {index: pd.Series(audits[run_id][column].to_numpy(float) * 100,
                             index=audits[run_id]["image_id"].to_numpy())
            for index, run_id in run_ids.items() if run_id in audits and column in audits[run_id]}
    return pd.DataFrame(rows).T.sort_index()


def _uniform(audits: dict[str, pd.DataFrame], run_ids, border_area: float) -> dict[str, float]:
    lung = np.mean([audits[r]["lung_area"].mean() for r in run_ids if r in audits])
    return {"uniform_outside": 100 * (1 - lung), "uniform_border": 100 * border_area}


def _interval_columns(scores: pd.DataFrame, column: str, confidence: float) -> dict[str, float]:
    means = scores.mean(axis=1)
    total = intervals.total_interval(scores, confidence)
    return {f"{column}_mean": float(means.mean()),
            f"{column}_sd": float(means.std(ddof=1)) if len(means) > 1 else math.nan,
            f"{column}_low": total.low, f"{column}_high": total.high}


def audit_table(runs: pd.DataFrame, configs: pd.DataFrame, audits: dict[str, pd.DataFrame],
                confidence: float = 0.95) -> pd.DataFrame:
    """One row per configuration of ``configs`` (run table order) whose runs were audited."""
    rows, methods = [], audited_methods(audits)
    for config, key in zip(configs["config"], configs["config_key"], strict=True):
        sub = runs[(runs["config_key"] == key) & runs["run_id"].isin(list(audits))]
        if sub.empty:
            continue
        by_seed = pd.Series(sub["run_id"].to_numpy(), index=sub["seed"].astype(int))
        row = {"config": config, "config_key": key, "n": len(sub),
               "images": int(share_matrix(audits, by_seed, "lung_area").notna().any().sum()),
               **_uniform(audits, sub["run_id"], _border_area(sub))}
        for column in shares_of(methods):
            row |= _interval_columns(share_matrix(audits, by_seed, column), column, confidence)
        for method in methods:  # a map without positive mass has no share: the shares average the rest
            tested = share_matrix(audits, by_seed, "lung_area").notna()
            empty = share_matrix(audits, by_seed, f"outside_lung_{method}").isna() & tested
            row[f"empty_maps_{method}"] = 100 * float(empty.to_numpy().sum() / max(tested.to_numpy().sum(), 1))
        for method in methods:  # the model-randomisation check (xray_ablate.audit.run), in pp
            change = sub.get(f"audit_randomisation_change_{method}", pd.Series(dtype=float))
            row[f"randomisation_change_{method}"] = 100 * float(change.mean()) if change.notna().any() else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _border_area(runs: pd.DataFrame) -> float:
    return float(runs["audit_border_area"].mean()) if "audit_border_area" in runs else math.nan


def level_table(runs: pd.DataFrame, audits: dict[str, pd.DataFrame],
                confidence: float = 0.95) -> pd.DataFrame:
    """Per level of the dataset factor, the shares pooled over every audited run of that level
    (each run one unit of the seed term); with both masked and raw, a row raw − masked
    (intervals.total_difference, unpaired: different runs, the same audited images)."""
    audited = runs[runs["run_id"].isin(list(audits))]
    rows, matrices, shares = [], {}, shares_of(audited_methods(audits))
    for level, sub in audited.groupby(MASK_FACTOR, sort=True):
        by_run = pd.Series(sub["run_id"].to_numpy(), index=sub["run_id"].to_numpy())
        matrices[level] = {c: share_matrix(audits, by_run, c) for c in shares}
        row = {"config": f"{level} models", "n": len(sub), "configs": sub["config_key"].nunique(),
               **_uniform(audits, sub["run_id"], _border_area(sub))}
        for column, scores in matrices[level].items():
            row |= _interval_columns(scores, column, confidence)
        rows.append(row)
    if {"raw", "masked"} <= set(matrices):
        row = {"config": "raw − masked"}
        for column in shares:
            diff = intervals.total_difference(matrices["raw"][column], matrices["masked"][column], confidence)
            row |= {f"{column}_mean": diff.estimate, f"{column}_low": diff.low,
                    f"{column}_high": diff.high, f"{column}_p": diff.pvalue}
        rows.append(row)
    return pd.DataFrame(rows)


# A share within this many pp of a uniform map's is no evidence of where a model looks, however
# many images pin it down (and with many configurations, one interval in twenty misses its value).
UNIFORM_MARGIN = 5.0
UNINFORMATIVE = (f"no configuration's or dataset level's share lies over {UNIFORM_MARGIN:g} pp from a uniform "
                 f"map's, or none moves over {UNIFORM_MARGIN:g} pp when the model's weights are redrawn at random")


def informative(table: pd.DataFrame, levels: pd.DataFrame | None = None,
                missed: Collection[str] = ()) -> dict[str, bool | None]:
    """Per method, whether its maps say where a model looks: the outside-lung share of some
    configuration, or of the masked or raw models pooled (``levels``), lies more than
    UNIFORM_MARGIN pp from a uniform map's, its whole interval over seeds + audited images beyond
    that margin; and, where the runs logged the model-randomisation check, some configuration's
    share moves more than UNIFORM_MARGIN pp when the weights are redrawn at random (a share that
    does not move shows the input, not the model). None without intervals. Grad-CAM read on too
    coarse a map spreads like a uniform one. A method in ``missed`` did not find the canary's
    planted marker (report/canary.py): uninformative whatever its shares."""
    if levels is not None and len(levels):
        table = pd.concat([table, levels[levels["config"] != "raw − masked"]], ignore_index=True)
    out = {}
    for method in (m for m in METHOD_LABELS if f"outside_lung_{m}_low" in table):
        low, high = table[f"outside_lung_{method}_low"], table[f"outside_lung_{method}_high"]
        if method in missed:
            out[method] = False
        elif low.isna().all():
            out[method] = None
        else:
            uniform = table["uniform_outside"]
            change = table.get(f"randomisation_change_{method}", pd.Series(dtype=float))
            out[method] = bool(((low > uniform + UNIFORM_MARGIN) | (high < uniform - UNIFORM_MARGIN)).any()) and (
                change.isna().all() or bool((change > UNIFORM_MARGIN).any()))
    return out


def most_different(table: pd.DataFrame, baseline_key: str) -> str | None:
    """The configuration whose mean Grad-CAM outside-lung share is farthest from the baseline's."""
    base = table[table["config_key"] == baseline_key]
    others = table[table["config_key"] != baseline_key]
    if base.empty or others.empty:
        return None
    gap = (others["outside_lung_gradcam_mean"] - base["outside_lung_gradcam_mean"].iloc[0]).abs()
    return None if gap.isna().all() else str(others.loc[gap.idxmax(), "config_key"])


def summarise_audit(runs: pd.DataFrame, configs: pd.DataFrame, baseline_key: str,
                    audits: dict[str, pd.DataFrame], confidence: float = 0.95,
                    missed: Collection[str] = ()) -> AuditSummary | None:
    """The audit of the report's runs (``configs``: the run table; ``audits``: load_audits;
    ``missed``: the methods that did not find the canary's marker); None when no run was audited."""
    if not audits:
        return None
    table = audit_table(runs, configs, audits, confidence)
    shown, notes = {}, {}
    for key in (baseline_key, most_different(table, baseline_key)):
        sub = runs[(runs["config_key"] == key) & runs["run_id"].isin(list(audits))]
        if key is not None and len(sub):
            first = sub.sort_values("seed").iloc[0]
            label = table.loc[table["config_key"] == key, "config"].iloc[0]
            title = f"{label} (seed {int(first['seed'])})"
            shown[title], notes[title] = str(first["run_id"]), planted_note(first)
    levels = level_table(runs, audits, confidence)
    return AuditSummary(table, levels, shown, confidence, montage_notes=notes,
                        informative=informative(table, levels, missed),
                        missed_canary=tuple(m for m in METHOD_LABELS if m in missed))


def planted_note(run: pd.Series) -> str:
    """How often a run's maps light each planted marker its audited images carry, in words ("" if
    none): its audit_hotspot_<attribute>_<method> metrics (xray_ablate.audit)."""
    parts = []
    for marker in PLANTED:
        rates = {m: run.get(f"audit_hotspot_{marker.attribute}_{m}") for m in METHOD_LABELS}
        found = [f"{METHOD_LABELS[m]} in {float(r):.0%}" for m, r in rates.items() if r is not None and pd.notna(r)]
        if found:
            parts.append(f"the planted marker ({marker.attribute}={marker.level}) is a hot spot of "
                         f"{' and of '.join(found)} of this run's audited images that carry it")
    if not parts:
        return ""
    text = "; ".join(parts)
    return (text[0].upper() + text[1:] + f" (a hot spot: the box's mean attribution at least "
            f"{HOTSPOT_RATIO:g}× the map's).")


# --- the report folder and report.md ---------------------------------------------------------

def write_audit(folder: Path, audit: AuditSummary) -> dict[str, tuple[str, str]]:
    """audit.csv/.tex and the montages into ``folder``; the table files (title -> (csv, tex))."""
    numeric = pd.concat([audit.table, audit.levels], ignore_index=True)
    numeric.to_csv(folder / "audit.csv", index=False)
    (folder / "audit.tex").write_text(to_latex(display_audit(audit.table, audit.lead)))
    for i, (title, run_id) in enumerate(audit.montage_runs.items()):
        name = f"audit_montage_{i}.png"
        if copy_artifact(run_id, schema.AUDIT_MONTAGE, folder / name) is not None:
            audit.montages[title] = name
    return {"Saliency audit": ("audit.csv", "audit.tex")}


def display_audit(table: pd.DataFrame, lead: str = "gradcam") -> pd.DataFrame:
    """The shown table, in %: per share "mean ± sd [interval over seeds + audited images]", the
    ``lead`` method's shares first."""
    out = pd.DataFrame({"configuration": table["config"]})
    if "n" in table:
        out["runs"] = table["n"].map(lambda v: fmt(v, 0))
    if "images" in table:
        out["audited images"] = table["images"].map(lambda v: fmt(v, 0))
    shown = {c: label for c, label in SHARES.items() if f"{c}_mean" in table}
    for column, label in sorted(shown.items(), key=lambda item: not item[0].endswith(lead)):
        sd = table.get(f"{column}_sd", pd.Series(math.nan, index=table.index))
        out[label] = [f"{fmt_pm(m, s)} {fmt_ci(lo, hi)}".removesuffix(" –") for m, s, lo, hi in
                      zip(table[f"{column}_mean"], sd, table[f"{column}_low"], table[f"{column}_high"],
                          strict=True)]
    out["uniform map: outside lungs / border"] = [
        f"{fmt(o)} / {fmt(b)}" for o, b in zip(table["uniform_outside"], table["uniform_border"], strict=True)]
    for method, label in METHOD_LABELS.items():
        if f"empty_maps_{method}" in table and table[f"empty_maps_{method}"].fillna(0).gt(0).any():
            out[f"{label}: empty maps, left out of its shares (%)"] = table[f"empty_maps_{method}"].map(fmt)
    for method, label in METHOD_LABELS.items():
        if f"randomisation_change_{method}" in table:  # per configuration only (not the pooled levels)
            out[f"{label}: change with random weights (pp)"] = table[f"randomisation_change_{method}"].map(fmt)
    return out


def _share_text(row: pd.Series, column: str, unit: str = "%") -> str:
    """"41 % [35, 47]"; a difference: "+12 pp [4, 20]"; without an interval the value alone."""
    ci = fmt_ci(row[f"{column}_low"], row[f"{column}_high"], 0)
    sign = "+" if unit == "pp" else ""
    return f"{row[f'{column}_mean']:{sign}.0f} {unit}" + ("" if ci == "–" else f" {ci}")


def summary_blocks(audit: AuditSummary | None) -> list[str]:
    """The summary's paragraph on masked and raw models, in words: "raw models put 41 % [35, 47]
    of their Grad-CAM mass outside the lungs, where a uniform map would put 38 %"; [] without."""
    if audit is None or audit.levels.empty:
        return []
    levels = audit.levels.set_index("config")
    lead = audit.lead
    others = [m for m in audit.informative if m != lead]
    parts = []
    for level in ("raw", "masked"):
        if f"{level} models" not in levels.index:
            continue
        row = levels.loc[f"{level} models"]
        runs = f"{int(row['n'])} run{'s' if row['n'] != 1 else ''}"
        parts.append(
            f"{level} models ({runs}) put {_share_text(row, f'outside_lung_{lead}')} of "
            f"their {METHOD_LABELS[lead]} mass outside the lungs, where a uniform map would put "
            f"{row['uniform_outside']:.0f} %, and {_share_text(row, f'border_{lead}')} in the border "
            f"band (uniform: {row['uniform_border']:.0f} %)"
            + "".join(f"; {METHOD_LABELS[m]}: {_share_text(row, f'outside_lung_{m}')} outside the lungs"
                      for m in others))
    if not parts:
        return []
    text = "**Where the models look:** " + "; ".join(parts) + "."
    if "raw − masked" in levels.index:
        row = levels.loc["raw − masked"]
        p = row[f"outside_lung_{lead}_p"]
        text += (f" Raw − masked, {METHOD_LABELS[lead]} outside the lungs: "
                 f"{_share_text(row, f'outside_lung_{lead}', 'pp')}"
                 + (f" (p = {fmt_p(p)})" if np.isfinite(p) else "")
                 + f"; in the border band: {_share_text(row, f'border_{lead}', 'pp')}.")
    if audit.gradcam_uninformative:
        text += (f" Grad-CAM is uninformative here ({UNINFORMATIVE}), so its maps do not say where these "
                 "models look.")
    if levels["outside_lung_gradcam_low"].notna().any():
        return [text + f" Intervals: {audit.confidence:.0%} over seeds and audited images."]
    return [text + " No intervals: they need at least 2 audited runs per level."]


def audit_section(audit: AuditSummary | None) -> list[Block]:
    """The report's "Where the models look" section (the summary holds ``summary_blocks``)."""
    if audit is None:
        return []
    verdicts = {None: "no intervals to tell", True: "informative (a configuration's or a "
                f"dataset level's share lies over {UNIFORM_MARGIN:g} pp from a uniform map's, and moves over "
                f"{UNIFORM_MARGIN:g} pp when the model's weights are redrawn)",
                False: f"uninformative ({UNINFORMATIVE})"}
    out = [Heading("Where the models look (saliency audit)"),
           Text("; ".join(f"{METHOD_LABELS[m]}: " + ("uninformative (it missed the canary's planted marker: see "
                                                      "'Positive control')" if m in audit.missed_canary
                                                      else verdicts[audit.informative.get(m)])
                          for m in audit.informative)
                + f". Shares of attribution mass, in %: mean ± sd over seeds [{audit.confidence:.0%} CI over "
                  "seeds and audited images]."), Table(display_audit(audit.table, audit.lead))]
    if len(audit.levels):
        out += [Text("Pooled per dataset level (every audited run of the level; raw − masked in pp):"),
                Table(display_audit(audit.levels, audit.lead))]
    blind = [METHOD_LABELS[m] for m in audit.informative if audit.informative[m] is False]
    caution = f" ({', '.join(blind)} uninformative here)" if blind else ""
    labels = ", ".join(METHOD_LABELS[m] for m in audit.informative)
    for title, name in audit.montages.items():
        out += [Heading(f"Montage{caution}: {title}", 3),
                Figure(f"Montage: {title}", name),
                Text(f"The same images under each method's map ({labels}), "
                     "correct predictions first." + (f" {audit.montage_notes[title]}" if audit.montage_notes.get(title)
                                                     else ""))]
    out.append(Text(
        "Per run, up to audit.images test images (the same images for every configuration) get "
        "Grad-CAM on the deepest activation whose map is 16 px or more a side (positive part, upsampled) and "
        "|input × gradient| (or, with audit.methods, |integrated gradients| from a black image) for the "
        "predicted class (Captum). Shares are of each map's mass; a "
        "uniform map would put the area shares shown in the last column. A masked model's input is "
        "zero outside the lungs, so its input × gradient there is zero by construction; its Grad-CAM "
        "mass there comes from the coarser map spreading over the lung edge. "
        "mean ± sd: over seeds of each run's mean share; CI: intervals.total_interval over seeds and "
        "audited images (pooled rows: over runs and images). Change with random weights: the "
        "model-randomisation check (Adebayo et al. 2018), |outside-lung share of the trained model − "
        "that of a copy with every weight redrawn at random| per image, mean over the first 16 audited "
        "images and over runs: a method whose shares do not move shows the input, not what the model "
        "learned."))
    return out
