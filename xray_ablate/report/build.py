"""write_report(config): read the runs, compute the tables, draw, write reports/<name>/, log to MLflow."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from omegaconf import DictConfig

from xray_ablate.config.factors import factor_names
from xray_ablate.config.load import to_config
from xray_ablate.config.schema import STUDY_BASELINE, Config, ReportConfig
from xray_ablate.data.atomic import check_writable
from xray_ablate.data.owned import replace_owned_dir
from xray_ablate.report.audit import LEAD_SHARE, lead_share, load_audits, summarise_audit, write_audit
from xray_ablate.report.canary import canary_result, canary_tag
from xray_ablate.report.confounds import confounds, trained_reference_rows
from xray_ablate.report.curves import FIGURE, compute_curves, learning_curve_plot
from xray_ablate.report.images import (
    Evidence,
    add_run_evidence,
    class_shares,
    floor_table,
    mcnemar_table,
    not_learned_warning,
    references,
)
from xray_ablate.report.render import plots
from xray_ablate.report.render.content import Content, document, table_files
from xray_ablate.report.render.html import render_html
from xray_ablate.report.render.markdown import markdown
from xray_ablate.report.render.tables import (
    to_latex,
)
from xray_ablate.report.runs import (
    ID_COLUMNS,
    Selection,
    clean_runs,
    fallback_baseline,
    integrity_filter,
    load_predictions,
    load_probes,
    matching_configs,
    mixing_warnings,
    select_runs,
)
from xray_ablate.report.tables import (
    Settings,
    baseline_sd,
    factorial,
    mdd_row,
    model_table,
    pooled_paired_sd,
    pooled_sd,
    power_table,
    run_table,
    select_levels,
)
from xray_ablate.stats import intervals
from xray_ablate.stats.claims import ablation_claims, verdicts
from xray_ablate.stats.mixed import pooled_intervals
from xray_ablate.stats.verdicts import SequentialDesign, Verdict
from xray_ablate.tracking import links, schema
from xray_ablate.tracking.lifecycle import tracked_run
from xray_ablate.tracking.reader import epoch_history
from xray_ablate.tracking.store import code_version
from xray_ablate.tracking.verdicts import tag_canary, tag_parent, verdict_tag
from xray_ablate.tracking.view import AblationView, experiment_filter, save_view, sweep_filter

log = logging.getLogger(__name__)
HTML = "report.html"  # beside report.md; the MLflow UI shows it inline in the report run's artifacts


def settings_from(config: Config) -> Settings:
    report = config.report
    return Settings(metric=report.metric, alpha=report.alpha, power=report.power,
                    detect=tuple(float(v) for v in report.detect), n_resamples=report.bootstrap.n_resamples,
                    bootstrap_seed=report.bootstrap.seed, delta=config.sweep.delta)


def loaded_experiment(config: Config) -> str | None:
    """The experiment= config loaded into ``config`` (its experiment_name), else None."""
    name = config.experiment_name
    if name in (None, "none", "null"):
        try:  # an experiment config that does not set experiment_name
            from hydra.core.hydra_config import HydraConfig

            name = HydraConfig.get().runtime.choices.get("experiment")
        except (ValueError, AttributeError):
            return None
    return None if name in (None, "none", "null") else str(name)


def _overridden_on_command_line() -> bool:
    """Whether the Hydra command line (when Hydra runs) set report.baseline or chose report=."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return False
        overrides = list(HydraConfig.get().overrides.task)
    except (ValueError, AttributeError):
        return False
    for override in overrides:
        key = str(override).split("=", 1)[0].lstrip("+~")
        if key in ("report", "report.baseline") or key.startswith("report.baseline."):
            return True
    return False


def choose_baseline(config: Config, selection: Selection) -> tuple[dict[str, str | None], str]:
    """The baseline levels and where they came from, in words. The first that applies:

    1. report.baseline set explicitly: a Hydra command-line override (report.baseline.*=...), or,
       where that cannot be seen (build_report called from code), a value that differs from
       conf/report/default.yaml;
    2. an experiment= config is loaded: its report.baseline;
    3. the selected sweep's parent run recorded params report.baseline.<factor>: those (so that
       `make report` after a sweep of an experiment config compares with that experiment's
       baseline);
    4. report.baseline of conf/report/default.yaml.
    """
    configured = select_levels(config.report.baseline)
    on_command_line = _overridden_on_command_line()
    experiment = loaded_experiment(config)
    if on_command_line:
        return configured, "report.baseline set on the command line"
    if configured != select_levels(STUDY_BASELINE):
        where = f"experiment config {experiment!r}" if experiment else "the configuration passed in"
        return configured, f"report.baseline of {where}"
    if experiment:
        return configured, f"report.baseline of experiment config {experiment!r}"
    if selection.parent_baseline:
        sweep = selection.sweep_ids[0] if selection.sweep_ids else "?"
        return dict(selection.parent_baseline), (
            f"recorded by sweep {sweep} (params report.baseline.* of its parent run "
            f"{(selection.parent_run_id or '')[:8]}); pass report.baseline.<factor>=... to override")
    return configured, "report.baseline of conf/report/default.yaml"


def speaks_for_the_sweep(selection: Selection, levels: dict[str, str | None], metric: str) -> bool:
    """Whether a report's verdicts are the sweep's own: judged on the metric and against the
    baseline the sweep recorded, so they may replace the verdicts its parent run holds. A report
    with another report.metric or report.baseline wrote over them, under the same tag names."""
    return (metric == (selection.parent_metric or ReportConfig.metric)
            and (not selection.parent_baseline or levels == dict(selection.parent_baseline)))


def safe_name(name: str) -> str:
    """The report's folder name: letters (any script), digits and . _ = -; where a name had to be
    changed, a short hash of it follows, so "my exp" and "my_exp", or two names in another script
    that lost every character, do not share a folder (one report would replace the other). At most
    120 bytes: a longer name made a temporary folder name the file system refuses."""
    cleaned = re.sub(r"[^\w.=-]+", "_", name).strip("._") or "report"
    while len(cleaned.encode()) > 120:
        cleaned = cleaned[:-1]
    if cleaned == name:
        return cleaned
    return f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class Written:
    """A written report: its folder, and where the MLflow UI shows it."""

    folder: Path
    uri: str
    experiment_id: str
    run_id: str | None  # the report run, None with report.log_to_mlflow=false
    runs_link: str  # the runs page opened on the report's ablation view (tracking/view.py)

    def links(self) -> list[str]:
        """Lines to print: the runs page's ablation view and the report run's report.html."""
        out = [f"runs in the MLflow UI: {self.runs_link}"]
        if self.run_id:
            out.append("report in the MLflow UI: "
                       + links.artifact_page(self.uri, self.experiment_id, self.run_id, HTML))
        if links.ui_base(self.uri) == links.LOCAL_UI:
            out.append("(a local store: start the UI with `make ui`)")
        return out


def build_report(cfg: DictConfig, *, sweep_id: str | None = None) -> Path:
    """The folder of the report of a composed config (``write_report`` of its typed config)."""
    return write_report(to_config(cfg), sweep_id=sweep_id).folder


def write_report(config: Config, *, sweep_id: str | None = None) -> Written:
    """Write the report of one sweep or experiment to ``paths.reports_dir/<name>/``; return that folder.

    Runs are chosen by (first that is set) ``sweep_id``, ``report.sweep_id``,
    ``report.experiment_name``, the experiment= config loaded in ``config`` (``experiment_name``),
    else the newest sweep; in MLflow experiment ``tracking.experiment``, or when nothing there
    matches, in the store's other experiments. The folder is ``report.name``, else the experiment
    name, else the sweep id. Raises UserError when nothing usable is found.
    """
    report = config.report
    check_writable(Path(config.paths.reports_dir), "the reports folder", "set paths.reports_dir to a folder")
    settings = settings_from(config)
    sweep = sweep_id if sweep_id is not None else report.sweep_id
    exp_name = report.experiment_name
    if sweep is None and exp_name is None:
        exp_name = loaded_experiment(config)
    selection = select_runs(config.tracking.uri, config.tracking.experiment, sweep_id=sweep, experiment_name=exp_name)
    selection.name = safe_name(report.name or selection.name)
    levels, source = choose_baseline(config, selection)
    content, kept = analyse(selection, levels, settings, baseline_source=source)

    out_dir = Path(config.paths.reports_dir) / selection.name
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{selection.name}.", dir=out_dir.parent))
    try:
        _write(work, content, kept, report.max_curves)
        replace_owned_dir(work, out_dir, "a report")  # never over a folder of the user's
    finally:
        shutil.rmtree(work, ignore_errors=True)
    uri = config.tracking.uri
    run_id, runs_link = None, links.runs_page(uri, selection.experiment_id)
    if report.log_to_mlflow:
        run_id = _log_run(selection, out_dir, content, uri)
        if selection.parent_run_id:
            if speaks_for_the_sweep(selection, levels, settings.metric):  # no claim left: its old verdicts go
                tag_parent(uri, selection.parent_run_id, content.verdicts)
            elif content.verdicts:
                log.info("the sweep's parent run keeps its verdicts: this report's metric (%s) or baseline "
                         "is not the sweep's, and its verdicts are in its own run and folder", settings.metric)
        if selection.parent_run_id and content.canary:
            tag_canary(uri, selection.parent_run_id, canary_tag(content.canary))
        by_sweep = sweep is not None or exp_name is None  # as select_runs chose; else every run of exp_name
        view = ablation_view(selection, kept, settings.metric, by_sweep,
                             tuple(verdict_tag(v.claim) for v in content.verdicts))
        runs_link = save_view(uri, selection.experiment_id, view)
    log.info("report written to %s", out_dir)
    return Written(out_dir, uri, selection.experiment_id, run_id, runs_link)


def ablation_view(selection: Selection, runs: pd.DataFrame, metric: str, by_sweep: bool,
                  verdict_tags: tuple[str, ...] = ()) -> AblationView:
    """The MLflow runs page's view of the report's runs: grouped by configuration, sorted by ``metric``."""
    varied = varied_factors(runs)
    run_filter = (sweep_filter(selection.sweep_ids[0]) if by_sweep
                  else experiment_filter(str(selection.experiment_name)))
    n_levels = len(runs[varied].drop_duplicates()) if varied else 1
    return AblationView(name=f"{selection.name}: {' x '.join(varied) or 'seeds only'}", run_filter=run_filter,
                        metric=metric, factors=tuple(varied), by_config_key=runs["config_key"].nunique() > n_levels,
                        verdict_tags=verdict_tags if by_sweep else ())


def varied_factors(runs: pd.DataFrame) -> list[str]:
    """The factors with more than one level among ``runs`` (the tidy frame)."""
    return [f for f in factor_names() if runs[f].nunique() > 1]


def analyse(selection: Selection, levels: dict[str, str | None], settings: Settings,
            baseline_source: str = "report.baseline") -> tuple[Content, pd.DataFrame]:
    """Clean and filter the selected runs, pick the baseline, compute every table."""
    finished = selection.runs[selection.runs["status"] == "FINISHED"]
    evidence = Evidence(load_predictions(finished["run_id"]), load_audits(finished["run_id"]),
                        load_probes(finished["run_id"]))
    notes = []
    canary = canary_result(selection.canary_runs, selection.canary_requested)
    missed = canary.missed_methods if canary else set()
    if settings.metric == LEAD_SHARE:
        settings = replace(settings, metric=lead_share(finished, evidence.audits, settings.confidence, missed))
        notes.append(f"report.metric={LEAD_SHARE}: {settings.metric}, the attribution outside the lungs of "
                     "the method the saliency audit leads with (see its section).")
    cleaned = clean_runs(add_run_evidence(selection.runs, evidence), settings.metric)
    notes += cleaned.notes
    matches = matching_configs(cleaned.runs, levels)
    kept, excluded, reference = integrity_filter(cleaned.runs, matches[0] if matches else None)
    if len(excluded):
        notes.append(f"{int(excluded['n_runs'].sum())} run(s) with another dataset or split were "
                     "left out (see 'Runs left out').")
    matches = [k for k in matches if k in set(kept["config_key"])]
    wanted = ", ".join(f"{k}={v}" for k, v in levels.items() if v is not None) or "any"
    judged_against = selection.parent_sweep.get("sweep.baseline")  # an adaptive sweep's rounds' baseline
    if judged_against in set(kept["config_key"]) and (judged_against in matches or not matches):
        baseline_key = judged_against
        if len(matches) != 1:
            notes.append(f"The baseline is the configuration the adaptive sweep's rounds judged against "
                         f"({judged_against[:8]}): " + (f"{len(matches)} configurations match the baseline "
                                                        f"levels ({wanted})." if matches else
                                                        f"no run matches report.baseline ({wanted})."))
    elif matches:
        baseline_key = matches[0]
        if len(matches) > 1:
            notes.append(f"{len(matches)} configurations match the baseline levels ({wanted}); "
                         f"the one with the most seeds ({baseline_key[:8]}) is the baseline.")
    else:
        baseline_key = fallback_baseline(kept, levels)
        notes.append(f"No run matches report.baseline ({wanted}); the baseline is the "
                     "configuration with the most seeds (ties: the closest to those levels).")
    base_row = kept[kept["config_key"] == baseline_key].iloc[0]
    table = run_table(kept, baseline_key, settings, evidence)
    missing = int((~kept["run_id"].map(evidence.has)).sum())
    if missing:
        notes.append(f"{missing} of {len(kept)} run(s) have no {schema.PREDICTIONS} artifact: "
                     "configurations with such a run get no interval over test images.")
    varied = varied_factors(kept)
    judged, pooled, design_note = claim_verdicts(kept, evidence, baseline_key, settings, selection, varied)
    labels = dict(zip(table["config_key"], table["config"], strict=True))
    found = confounds(selection.parent_run_id, kept, labels, evidence.predictions, settings.confidence)
    content = Content(
        selection=selection, settings=settings,
        baseline_label=", ".join(f"{f}={base_row[f]}" for f in factor_names()),
        baseline_levels=wanted, baseline_source=baseline_source,
        warnings=mixing_warnings(kept), notes=notes, verdicts=judged, pooled=pooled, verdict_note=design_note,
        reference=reference, n_runs=len(kept), run_table=table,
        power=power_table(table, settings), excluded=excluded,
        model=model_table(kept, baseline_key, settings),
        factorial=factorial(kept, baseline_key, settings, evidence),
        learning_warning=not_learned_warning(kept, labels),
        references=pd.concat([references(class_shares(kept, evidence), kept), trained_reference_rows(found)],
                             ignore_index=True),
        mcnemar=mcnemar_table(kept, evidence, table, baseline_key),
        confounds=found,
        audit=summarise_audit(kept, table, baseline_key, evidence.audits, settings.confidence, missed),
        canary=canary,
        **_variance(kept, evidence, table, baseline_key, settings),
        curves=compute_curves(kept, table, settings, evidence),
        factorial_note=("No two factors are crossed (every combination run), so there are no "
                        "main effects beyond the run table's Δ; varied: "
                        f"{', '.join(varied) or 'none'}."))
    return content, kept


def claim_verdicts(runs: pd.DataFrame, evidence: Evidence, baseline_key: str, s: Settings,
                   selection: Selection, varied: list[str]) -> tuple[list[Verdict], pd.DataFrame, str]:
    """Each claim's verdict (stats.claims: the adaptive sweep's own rule), its pooled interval
    (stats.mixed, every run of every configuration: the check beside it), and how the verdicts
    were reached, in words; none without per-image scores or 2 seeds in every configuration."""
    keys = list(dict.fromkeys([baseline_key, *runs["config_key"]]))
    scores = {k: evidence.scores(runs, k, s.metric, 1.0) for k in keys}
    if len(keys) < 2 or any(v is None or len(v) < 2 for v in scores.values()):
        return [], pd.DataFrame(), ("No verdicts: they need every configuration's predictions.csv, a metric "
                                    "with per-image scores and at least 2 seeds per configuration.")
    levels = runs.drop_duplicates("config_key").set_index("config_key").loc[keys, varied].astype(str)
    recorded = selection.parent_sweep
    if recorded.get("sweep.looks"):
        looks = tuple(int(n) for n in recorded["sweep.looks"].split(","))
        delta = float(recorded.get("sweep.delta", s.delta))
        how = (f"the adaptive sweep's group-sequential design (looks at {', '.join(map(str, looks))} seeds "
               "per configuration; each claim's verdict is that of the first look that resolves it)")
    else:
        looks, delta = (min(len(v) for v in scores.values()),), s.delta
        how = "one look at the seeds run (a fixed sweep)"
    design = SequentialDesign(delta=delta / 100, alpha=s.alpha, looks=looks)
    claims = ablation_claims(levels, baseline_key)
    judged = verdicts(claims, scores, design, higher_is_better=s.higher_is_better)
    pooled = pooled_intervals(scores, claims, s.confidence)
    return judged, pooled, (
        f"These intervals decide: each claim's seed-matched interval over seeds and test images, read at the "
        f"level its look allows; better or worse when it excludes 0, equivalent when the two one-sided tests "
        f"put the difference within ±{delta:g} pp (sweep.delta), at α = {s.alpha:g}, by {how}. The pooled "
        f"column is the check: one crossed random-effects fit of every run's per-image scores (stats/mixed.py, "
        f"{s.confidence:.0%}, all seeds of every configuration, seeds taken as independent), conservative "
        "where equal seeds share a split.")


def _variance(runs: pd.DataFrame, evidence: Evidence, table: pd.DataFrame, baseline_key: str,
              s: Settings) -> dict:
    """The baseline's variance decomposition and the power targets with the test-sample floor
    (Content fields); empty without the baseline's predictions or with fewer than 2 seeds."""
    scores = evidence.scores(runs, baseline_key, s.metric, s.scale)
    if scores is None or len(scores) < 2:
        return {}
    split = intervals.variance_split(scores)
    # Δ: the pooled sd of seed-matched differences and the median image SE of the rows' Δ;
    # before any comparison, those of two independent configurations like the baseline.
    pair_sd = pooled_paired_sd(table)[0]
    seed_sd = pair_sd if pd.notna(pair_sd) else math.sqrt(2) * pooled_sd(table, s)[0]
    image_se = table["delta_se_image"].iloc[1:].median()
    image_se = image_se if pd.notna(image_se) else math.sqrt(2) * split.se_image
    floor = floor_table(s.detect, seed_sd, image_se, split.n_seeds, split.n_images, s.alpha, s.power)
    return {"variance": split, "floor": floor, "floor_sd": (seed_sd, image_se)}


def _write(folder: Path, c: Content, runs: pd.DataFrame, max_curves: int) -> None:
    s = c.settings
    frames = table_files(c)
    if c.curves.learning is not None:
        c.figures[FIGURE] = learning_curve_plot(c.curves.learning, s, folder / "learning_curve.png").name
    if c.audit is not None:
        c.table_files |= write_audit(folder, c.audit)
    for title, (stem, numeric, shown) in frames.items():
        numeric.to_csv(folder / f"{stem}.csv", index=False)
        (folder / f"{stem}.tex").write_text(to_latex(shown))
        c.table_files[title] = (f"{stem}.csv", f"{stem}.tex")
    ids = [c for c in runs.columns if c in ID_COLUMNS or c in factor_names()]
    metrics = sorted(c for c in runs.columns if c not in ids and c not in ("start_time", "end_time"))
    runs[ids + metrics].to_csv(folder / "runs.csv", index=False)
    c.table_files["Runs (one row per run)"] = ("runs.csv", "")
    if len(c.run_table) > 1:
        c.figures["Δ vs baseline"] = plots.forest_plot(c.run_table, s, folder / "forest.png",
                                                       c.references).name
    c.figures["Runs per configuration"] = plots.points_plot(
        runs, c.run_table, s, folder / "accuracy_points.png", c.references).name
    chosen = plots.curve_configs(c.run_table, max_curves)
    drawn = runs[runs["config_key"].isin(chosen["config_key"])]
    history = epoch_history(drawn["run_id"].tolist(), ("val_acc", "val_loss"))
    curves = plots.learning_curves(history, drawn, chosen, folder / "learning_curves.png")
    if curves is not None:
        c.figures["Learning curves"] = curves.name
    blocks = document(c)
    (folder / "report.md").write_text(markdown(blocks))
    (folder / HTML).write_text(render_html(blocks, folder))


def _log_run(sel: Selection, folder: Path, c: Content, uri: str) -> str:
    """An MLflow run tagged xray.kind=report holding every output file, under the sweep's parent."""
    tags = {schema.KIND: "report", schema.SWEEP_ID: ",".join(sel.sweep_ids) or "none",
            schema.EXPERIMENT: sel.experiment_name or "none", schema.CODE_VERSION: code_version(),
            # in the sweeps' ablation views, whose filter is membership
            **{schema.SWEEP_MEMBER.format(s): "1" for s in sel.sweep_ids}}
    store = SimpleNamespace(uri=uri, experiment=sel.experiment, artifact_root=None)  # it exists already
    with tracked_run(store, f"report-{sel.name}", tags, parent_run_id=sel.parent_run_id) as recorder:
        n, sd = baseline_sd(c.run_table, c.settings)
        power = c.power.set_index("quantity")
        metrics = {"n_runs": c.n_runs, "n_configs": len(c.run_table), "baseline_n": n,
                   "baseline_sd": sd, "pooled_sd": pooled_sd(c.run_table, c.settings)[0],
                   "mdd": float(power.loc[mdd_row(n, c.settings), "unpaired"]),
                   "mdd_paired": float(power.loc[mdd_row(n, c.settings), "paired"]),
                   "n_not_learned": float(c.run_table["n_not_learned"].sum(min_count=1))}
        if c.variance is not None:
            metrics |= {"baseline_se_seed": c.variance.se_seed,
                        "baseline_se_image": c.variance.se_image}
        recorder.metrics({k: v for k, v in metrics.items() if pd.notna(v)})
        recorder.params({"report.metric": c.settings.metric, "report.selection": sel.by,
                         "report.baseline": c.baseline_label, "report.baseline_source": c.baseline_source})
        recorder.folder(folder)
    return recorder.run_id
