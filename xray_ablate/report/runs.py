"""Select training runs from MLflow, tidy them, drop duplicates and keep comparable runs only.

The report reads MLflow only. One row of the tidy frame is one training run: its id, status,
start time, config key, seed, sweep, split and dataset identity, the factor levels (one column per
factor of ``config.factors.FACTORS``), every final metric under its bare name (``test_accuracy``...)
and the image counts of ``COUNT_PARAMS`` (``n_train``...).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from xray_ablate.config.choices import CLASSES
from xray_ablate.config.factors import factor_names
from xray_ablate.config.schema import AUDIT_SETTINGS
from xray_ablate.errors import UserError
from xray_ablate.evaluation import PREDICTION_COLUMNS, PROB_COLUMNS
from xray_ablate.tracking import schema
from xray_ablate.tracking.reader import csv_artifacts, open_store, search_runs

BASELINE_PARAM = "report.baseline."  # + factor: the baseline a sweep's parent run recorded
PATIENT_FALLBACKS = "data_patient_fallbacks"  # metric: images counted as their own patient
TAG_COLUMNS = {
    schema.CONFIG_KEY: "config_key", schema.SEED: "seed", schema.SWEEP_ID: "sweep_id",
    schema.EXPERIMENT: "experiment_name", schema.SPLIT_HASH: "split_hash",
    schema.SPLIT_MODE: "split_mode", schema.FINGERPRINT: "fingerprint",
    schema.CODE_VERSION: "code_version", schema.PARENT_RUN: "parent_run_id",
    schema.DEVICE: "device",
}
# "Did it learn?" as training records it (evaluation.learning_check); until tracking/schema
# names them, they are named here. Runs without them are checked from predictions.csv.
TAG_COLUMNS |= {schema.LEARNED: "learned_tag", schema.LEARNED_REASON: "learned_reason_tag"}
UNKNOWN = "unknown"
ID_COLUMNS = ("run_id", "status", *TAG_COLUMNS.values(), "split_seed", "audit_settings")
# Params read as numbers: the images each run trained, validated and tested on.
COUNT_PARAMS = ("n_train", "n_val", "n_test", *(f"n_train_{c}" for c in CLASSES))


@dataclass
class Selection:
    """Which runs the report covers and where they came from."""

    experiment_id: str
    experiment: str  # MLflow experiment name
    by: str  # how the runs were chosen, in words
    name: str  # folder name of the report: the experiment= name if known, else the sweep id
    sweep_ids: list[str]
    parent_run_id: str | None  # the sweep's parent run, when the runs come from one sweep
    experiment_name: str | None  # the experiment= config name, when known
    runs: pd.DataFrame  # tidy, every status
    # report.baseline.<factor> params of the sweep's parent run: factor -> level (None = any)
    parent_baseline: dict[str, str | None] = field(default_factory=dict)
    # sweep.* params of the sweep's parent run (an adaptive sweep's design: until, delta, looks)
    parent_sweep: dict[str, str] = field(default_factory=dict)
    parent_metric: str | None = None  # param report.metric of the sweep's parent run (None: before 2026-12-07)
    canary_requested: bool = False  # the sweep's parent run recorded audit.canary=True
    canary_runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # its xray.kind=canary runs, tidy


@dataclass
class Cleaned:
    """FINISHED runs, one per (config key, seed), and what was dropped on the way."""

    runs: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _column(frame: pd.DataFrame, tag: str) -> pd.Series:
    return frame.get(f"tags.{tag}", pd.Series(dtype=object, index=frame.index))


def _find(ids: list[str], sweep_id: str | None, experiment_name: str | None
          ) -> tuple[pd.DataFrame, str | None, str]:
    """(training runs, sweep id, how they were chosen) within experiments ``ids``; runs may be empty."""
    if sweep_id is None and experiment_name is None:
        sweeps = search_runs(ids, **{schema.KIND: "sweep"})
        if sweeps.empty:
            return pd.DataFrame(), None, ""
        sweep_id = str(_column(sweeps, schema.SWEEP_ID).iloc[0])
        by = f"the newest sweep, {sweep_id}"
    else:
        by = f"sweep {sweep_id}" if sweep_id is not None else f"every run of experiment {experiment_name}"
    if sweep_id is not None:
        # Membership, not creation: a resumed sweep also counts the runs it found finished.
        raw = search_runs(ids, **{schema.KIND: "train", schema.SWEEP_MEMBER.format(sweep_id): "1"})
    else:
        raw = search_runs(ids, **{schema.KIND: "train", schema.EXPERIMENT: experiment_name})
    return raw, sweep_id, by


def select_runs(uri: str, experiment: str, *, sweep_id: str | None = None,
                experiment_name: str | None = None) -> Selection:
    """The training runs of one sweep, of one experiment= config, or (neither given) the newest sweep.

    Looks in MLflow experiment ``experiment`` first; when nothing there matches, in the store's
    other experiments (the selection says where the runs came from).
    """
    experiments = open_store(uri)
    configured = [i for i, name in experiments.items() if name == experiment]
    others = [i for i in experiments if i not in configured]
    raw, by = pd.DataFrame(), ""
    for ids in (configured, others):
        if ids:
            raw, sweep_id, by = _find(ids, sweep_id, experiment_name)
            if not raw.empty:
                break
    if raw.empty:
        raise UserError(_nothing_found(experiments, experiment, sweep_id, experiment_name))
    exp_id = str(raw["experiment_id"].iloc[0])  # the newest run's experiment
    raw = raw[raw["experiment_id"] == exp_id]
    if experiments[exp_id] != experiment:
        by += (f" of MLflow experiment {experiments[exp_id]!r}, the newest with runs (tracking.experiment="
               f"{experiment!r} {'has no such runs' if configured else 'does not exist'})")
    runs = tidy_runs(raw)
    sweep_ids = [sweep_id] if sweep_id else sorted(runs["sweep_id"].dropna().unique().tolist())
    parent, parent_baseline, parent_sweep, parent_metric, canary_requested = None, {}, {}, None, False
    if len(sweep_ids) == 1:
        found = search_runs([exp_id], **{schema.KIND: "sweep", schema.SWEEP_ID: sweep_ids[0]})
        if not found.empty:
            parent = str(found["run_id"].iloc[0])
            parent_baseline = recorded_baseline(found.iloc[0])
            parent_sweep = {str(k).removeprefix("params."): v for k, v in found.iloc[0].items()
                            if str(k).startswith("params.sweep.") and isinstance(v, str)}
            canary_requested = found.iloc[0].get("params.audit.canary") == "True"
            metric = found.iloc[0].get("params.report.metric")
            parent_metric = metric if isinstance(metric, str) else None
    canaries = [search_runs([exp_id], **{schema.KIND: schema.CANARY, schema.SWEEP_MEMBER.format(s): "1"})
                for s in sweep_ids]
    canaries = [c for c in canaries if not c.empty]
    names = [n for n in runs["experiment_name"].dropna().unique() if n != "none"]
    exp_name = experiment_name or (names[0] if len(names) == 1 else None)
    return Selection(experiment_id=exp_id, experiment=experiments[exp_id], by=by,
                     name=str(exp_name or sweep_id or experiments[exp_id]), sweep_ids=sweep_ids,
                     parent_run_id=parent, experiment_name=exp_name, runs=runs,
                     parent_baseline=parent_baseline, parent_sweep=parent_sweep, parent_metric=parent_metric,
                     canary_requested=canary_requested,
                     canary_runs=tidy_runs(pd.concat(canaries, ignore_index=True)) if canaries else pd.DataFrame())


def recorded_baseline(parent: pd.Series) -> dict[str, str | None]:
    """The params report.baseline.<factor> of a sweep's parent run (a search_runs row)."""
    prefix = "params." + BASELINE_PARAM
    out: dict[str, str | None] = {}
    for column, value in parent.items():
        if str(column).startswith(prefix) and isinstance(value, str):
            out[str(column).removeprefix(prefix)] = (None if value.strip() in ("", "None", "null")
                                                     else value)
    return out


def _nothing_found(experiments: dict[str, str], experiment: str, sweep_id: str | None,
                   experiment_name: str | None) -> str:
    ids = list(experiments)
    where = f"MLflow experiment {experiment!r} or any other"
    if not ids:
        return "the MLflow store holds no experiment: run a sweep first"
    if sweep_id is None and experiment_name is None:
        return (f"no sweep in {where}: run a sweep first (make run), or pass "
                "report.sweep_id=ID or report.experiment_name=NAME")
    if sweep_id is not None:
        sweeps = search_runs(ids, **{schema.KIND: "sweep"})
        known = ", ".join(_column(sweeps, schema.SWEEP_ID).dropna().astype(str).head(10))
        return f"no training runs of sweep {sweep_id!r} in {where} (newest sweeps: {known or 'none'})"
    names = sorted(_column(search_runs(ids, **{schema.KIND: "train"}), schema.EXPERIMENT)
                   .dropna().astype(str).unique())
    return (f"no training runs of experiment {experiment_name!r} in {where} (found: "
            f"{', '.join(names) or 'none'})")


def tidy_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """mlflow.search_runs output -> one row per run with bare column names."""
    out = pd.DataFrame({
        "run_id": raw["run_id"].astype(str),
        "status": raw["status"].astype(str),
        "start_time": raw["start_time"],
        "end_time": raw.get("end_time", pd.Series(pd.NaT, index=raw.index)),
    })
    for tag, column in TAG_COLUMNS.items():
        out[column] = raw.get(f"tags.{tag}", pd.Series(None, index=raw.index, dtype=object))
    out["seed"] = pd.to_numeric(out["seed"], errors="coerce").astype("Int64")
    out["split_mode"] = out["split_mode"].fillna("fixed")
    out["split_seed"] = raw.get("params.split.seed", pd.Series(None, index=raw.index, dtype=object))
    for name in factor_names():
        out[name] = raw.get(f"tags.{schema.FACTOR_TAG.format(name)}",
                            pd.Series(None, index=raw.index, dtype=object)).fillna(UNKNOWN).astype(str)
    metrics = {c.removeprefix("metrics."): raw[c].astype(float)
               for c in raw.columns if c.startswith("metrics.")}
    metrics |= {name: pd.to_numeric(raw[f"params.{name}"], errors="coerce")
                for name in COUNT_PARAMS if f"params.{name}" in raw}
    out = pd.concat([out, pd.DataFrame(metrics, index=raw.index)], axis=1)
    for column in ("split_hash", "fingerprint", "split_seed"):
        out[column] = out[column].fillna(UNKNOWN).astype(str)
    out["audit_settings"] = _audit_settings(raw)
    return out.reset_index(drop=True)


def _audit_settings(raw: pd.DataFrame) -> pd.Series:
    """An audited run's audit settings as text ('images=60 seed=0 ...', from its params; images:
    how many it audited, which is fewer than audit.images on a smaller test split, or 'all' where
    that was its whole test split, so that per-seed splits of other sizes are one setting); None for
    a run without the audit (off, or a dataset without Lung polygons: no audit metrics)."""
    audited = raw.get("metrics.audit_lung_area", pd.Series(math.nan, index=raw.index)).notna()
    settings = {key: raw.get(f"params.audit.{key}", pd.Series(UNKNOWN, index=raw.index)).fillna(UNKNOWN)
                for key in AUDIT_SETTINGS}
    if "metrics.audit_images" in raw:
        counted = raw["metrics.audit_images"]
        whole = counted >= pd.to_numeric(raw.get("params.n_test", pd.Series(math.nan, index=raw.index)),
                                         errors="coerce")
        shown = counted.map(lambda n: f"{n:.0f}", na_action="ignore").where(~whole, "all")
        settings["images"] = shown.fillna(settings["images"])
    text = pd.Series("", index=raw.index, dtype=object)
    for key, values in settings.items():
        text += f"{key}=" + values + " "
    return text.str.strip().where(audited, None)


def clean_runs(runs: pd.DataFrame, metric: str) -> Cleaned:
    """Keep FINISHED runs that carry a config key, a seed and ``metric``; the latest per (key,
    seed, comparability group), so that ``integrity_filter`` afterwards leaves one per (key, seed)."""
    notes = []
    status = runs["status"].value_counts()
    unfinished = status.drop("FINISHED", errors="ignore")
    if unfinished.sum():
        notes.append(f"{int(unfinished.sum())} run(s) not FINISHED were ignored ("
                     + ", ".join(f"{n} {s}" for s, n in unfinished.items()) + ").")
    kept = runs[runs["status"] == "FINISHED"]
    incomplete = kept["config_key"].isna() | kept["seed"].isna()
    if metric not in kept.columns:
        missing = pd.Series(True, index=kept.index)
    else:
        missing = kept[metric].isna()
    if (incomplete | missing).any():
        notes.append(f"{int((incomplete | missing).sum())} FINISHED run(s) without a config key, "
                     f"seed or {metric} metric were ignored: "
                     + ", ".join(kept.loc[incomplete | missing, "run_id"].str[:8]) + ".")
    kept = kept[~(incomplete | missing)]
    if kept.empty:
        raise UserError(f"no FINISHED training run with {metric} among the {len(runs)} selected "
                        "run(s)")
    # Duplicates within one comparability group only: a re-run on another dataset or split must
    # not hide the older runs that the integrity filter may keep.
    ordered = kept.assign(_group=comparability_group(kept)).sort_values(
        ["start_time", "end_time", "run_id"])
    deduped = ordered.drop_duplicates(["config_key", "seed", "_group"], keep="last").drop(
        columns="_group")
    if len(deduped) < len(kept):
        notes.append(f"{len(kept) - len(deduped)} older duplicate run(s) of the same configuration, "
                     "seed, dataset and split were replaced by the latest.")
    return Cleaned(deduped.sort_values(["config_key", "seed"]).reset_index(drop=True), notes)


def matching_configs(runs: pd.DataFrame, levels: Mapping[str, str | None]) -> list[str]:
    """Config keys whose factor levels equal ``levels`` (None = any), most seeds first."""
    unknown = set(levels) - set(factor_names())
    if unknown:
        raise UserError(f"report.baseline names unknown factor(s) {sorted(unknown)}; factors are "
                        f"{', '.join(factor_names())}")
    mask = pd.Series(True, index=runs.index)
    for factor, level in levels.items():
        if level is not None:
            mask &= runs[factor] == str(level)
    counts = runs[mask].groupby("config_key").agg(n=("seed", "size"), last=("start_time", "max"))
    return counts.sort_values(["n", "last"], ascending=False).index.tolist()


def fallback_baseline(runs: pd.DataFrame, levels: Mapping[str, str | None]) -> str:
    """When no configuration matches ``levels``: the one with the most seeds; ties go to the one
    closest to ``levels`` (most factors equal), then to the newest."""
    close = sum((runs[f] == str(v)).astype(int) for f, v in levels.items() if v is not None)
    frame = runs.assign(close=close if isinstance(close, pd.Series) else 0)
    ranked = frame.groupby("config_key").agg(n=("seed", "size"), close=("close", "first"),
                                             last=("start_time", "max"))
    return str(ranked.sort_values(["n", "close", "last"], ascending=False).index[0])


def comparability_group(runs: pd.DataFrame) -> pd.Series:
    """Runs in one group may share a table: same dataset fingerprint and the same split.

    Fixed split mode: same split manifest hash. per_seed mode (the split changes with the seed):
    same split seed base, so equal seeds mean equal splits.
    """
    per_seed = runs["split_mode"] == "per_seed"
    split = runs["split_hash"].where(~per_seed, "split.seed=" + runs["split_seed"])
    return runs["fingerprint"] + " / " + runs["split_mode"] + " / " + split


def integrity_filter(runs: pd.DataFrame, reference_key: str | None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Keep the runs comparable with the reference; return (kept, left out per config, reference).

    The reference group is the most common group among the runs of ``reference_key`` (the
    baseline), else the group with the most runs.
    """
    groups = comparability_group(runs)
    pool = groups[runs["config_key"] == reference_key] if reference_key is not None else groups
    if pool.empty:
        pool = groups
    counts = pool.value_counts()
    ref_group = min(counts[counts == counts.max()].index)
    ref_row = runs[groups == ref_group].iloc[0]
    reference = {"group": ref_group, "fingerprint": ref_row["fingerprint"],
                 "split_mode": ref_row["split_mode"], "split_hash": ref_row["split_hash"],
                 "split_seed": ref_row["split_seed"]}
    inside = groups == ref_group
    out = runs[~inside].copy()
    out["reason"] = [_reason(row, reference) for _, row in out.iterrows()]
    left = (out.groupby(["config_key", *factor_names(), "reason"], dropna=False)
            .agg(n_runs=("run_id", "size"),
                 seeds=("seed", lambda s: ", ".join(str(v) for v in sorted(s))))
            .reset_index())
    return runs[inside].reset_index(drop=True), left, reference


def _reason(row: pd.Series, ref: dict) -> str:
    if row["fingerprint"] != ref["fingerprint"]:
        return f"dataset fingerprint {row['fingerprint']} differs from the reference {ref['fingerprint']}"
    if row["split_mode"] != ref["split_mode"]:
        return f"split mode {row['split_mode']} differs from the reference {ref['split_mode']}"
    if ref["split_mode"] == "per_seed":
        return (f"split seed base {row['split_seed']} differs from the reference "
                f"{ref['split_seed']}")
    return f"split manifest {row['split_hash']} differs from the reference {ref['split_hash']}"


def mixing_warnings(runs: pd.DataFrame) -> list[str]:
    """Warnings about what the runs in the tables mix: code versions (or uncommitted code),
    devices, audit settings (runs of several sweeps in one experiment), and images without a
    patient id (possible patient leakage across the split)."""
    def listed(column: str) -> str:
        counts = runs[column].fillna(UNKNOWN).astype(str).value_counts().sort_index()
        return ", ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in counts.items())

    out = []
    versions = set(runs["code_version"].dropna().astype(str))
    if len(versions) > 1 or any(v.endswith("+dirty") for v in versions):
        why = " and ".join(
            ([f"{len(versions)} code versions"] if len(versions) > 1 else [])
            + (["uncommitted changes (+dirty)"] if any(v.endswith("+dirty") for v in versions)
               else []))
        out.append(f"The runs come from {why}: {listed('code_version')}. Differences may come "
                   "from code changes rather than the factors.")
    devices = set(runs["device"].dropna().astype(str)) if "device" in runs else set()
    if len(devices) > 1:
        out.append(f"The runs ran on more than one device: {listed('device')}. Numerics differ "
                   "between devices, so device and factor effects may mix.")
    audits = runs["audit_settings"].dropna() if "audit_settings" in runs else pd.Series(dtype=object)
    if audits.nunique() > 1:
        counts = audits.value_counts().sort_index()
        out.append("The runs were audited with different settings: " + "; ".join(
            f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in counts.items()) + ". The audit tables set "
            "their shares side by side, but they measure different audits (other images or methods).")
    if PATIENT_FALLBACKS in runs:
        leaky = runs[runs[PATIENT_FALLBACKS].fillna(0) > 0]
        if len(leaky):
            most = int(leaky[PATIENT_FALLBACKS].max())
            out.append(f"{len(leaky)} run(s) used data with images without a patient id (up to "
                       f"{most}), each counted as its own patient: images of one patient may sit "
                       "in both training and test sets (possible patient leakage).")
    return out


def load_predictions(run_ids: Iterable[str]) -> dict[str, pd.DataFrame]:
    """run id -> its predictions.csv artifact (image_id as str, label as int, prob_<class> as float,
    each attribute's levels as the text the metadata gave: "NA", "TRUE", "01" stay so, where
    pandas' guessing made them NaN, True and 1, and their subgroups lost their images; an empty
    cell is a missing level).

    Runs without the artifact are left out of the dict; a file without the expected columns is
    a UserError naming the run.
    """
    out = {}
    for run_id, frame in csv_artifacts(run_ids, schema.PREDICTIONS, dtype=str, keep_default_na=False,
                                       na_values=[""]).items():
        missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
        if missing:
            raise UserError(f"{schema.PREDICTIONS} of run {run_id} lacks column(s) {', '.join(missing)}")
        out[run_id] = frame.astype({"label": int, **dict.fromkeys(PROB_COLUMNS, float)})
    return out


def load_probes(run_ids: Iterable[str]) -> dict[str, pd.DataFrame]:
    """run id -> its feature probes per test image (image_id as str, probe_<attribute> 0/1); runs
    without eval.subgroups have none."""
    return csv_artifacts(run_ids, schema.PROBE_CSV, dtype={"image_id": str})
