"""The report's figures (matplotlib, Agg backend): forest plot, points over seeds, learning curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from xray_ablate.report.render.tables import metric_title
from xray_ablate.report.tables import Settings, metric_scale

DPI = 120


def _height(rows: int) -> float:
    return max(2.5, 0.45 * rows + 1.2)


NOT_LEARNED = "C3"  # colour of runs (and configurations with runs) that did not learn


def _labels(rows: pd.DataFrame) -> list[str]:
    """Configuration labels, marked when some of their runs did not learn."""
    return [f"{c}  [{int(k)} not learned]" if np.isfinite(k) and k > 0 else c
            for c, k in zip(rows["config"], rows["n_not_learned"].astype(float), strict=True)]


REFERENCE_STYLES = (("0.4", ":"), ("0.4", "--"), ("C2", "-."), ("C4", "-."), ("C5", "-."), ("C8", "-."))


def _reference_lines(ax, references: pd.DataFrame | None, metric: str, scale: float,
                     shift: float = 0.0) -> None:
    """A vertical line per reference (chance, majority class, the trained references) at its value
    of ``metric`` (minus ``shift``), labelled in the legend."""
    if references is None or references.empty or metric not in references:
        return
    for i, (_, ref) in enumerate(references.iterrows()):
        value = ref[metric] * scale - shift
        colour, style = REFERENCE_STYLES[i % len(REFERENCE_STYLES)]
        if np.isfinite(value):
            ax.axvline(value, color=colour, ls=style, lw=1, label=ref["config"].removeprefix("reference: "))


def forest_plot(table: pd.DataFrame, settings: Settings, path: Path,
                references: pd.DataFrame | None = None) -> Path:
    """Δ of each configuration against the baseline with its CI over seeds + test images (thin:
    over seeds only); the band is ± the baseline sd; dotted and dashed lines: chance and majority
    class, dash-dotted: the trained references, relative to the baseline's mean. Configurations
    with runs that did not learn are red."""
    rows = table.iloc[1:][::-1]
    unit = settings.unit or "units"
    fig, ax = plt.subplots(figsize=(10, _height(len(rows))))
    y = np.arange(len(rows))
    sd = table.iloc[0][f"{settings.metric}_sd"]
    if np.isfinite(sd):
        ax.axvspan(-sd, sd, color="0.9", label=f"± baseline sd ({sd:.2f} {unit})")
    ax.axvline(0, color="0.3", lw=1)
    _reference_lines(ax, references, settings.metric, settings.scale,
                     table.iloc[0][f"{settings.metric}_mean"])
    delta = rows["delta"].to_numpy(float)
    level = f"{settings.confidence:.0%}"
    for columns, style, label in ((("delta_low", "delta_high"), dict(lw=1, alpha=0.5),
                                   f"{level} CI over seeds"),
                                  (("delta_ci_total_low", "delta_ci_total_high"), dict(lw=2.5),
                                   f"{level} CI over seeds + test images")):
        low, high = (rows[c].to_numpy(float) for c in columns)
        ok = np.isfinite(low) & np.isfinite(high)
        if ok.any():
            ax.errorbar(delta[ok], y[ok], xerr=_xerr(delta[ok], low[ok], high[ok]), fmt="none",
                        ecolor="C0", capsize=3, label=label, **style)
    bad = rows["n_not_learned"].fillna(0).to_numpy(float) > 0
    ax.plot(delta[~bad], y[~bad], "o", color="C0", label="Δ")
    if bad.any():
        ax.plot(delta[bad], y[bad], "o", color=NOT_LEARNED, label="has runs that did not learn")
    has_ci = np.isfinite(rows["delta_low"].to_numpy(float))
    if (~has_ci).any():
        ax.plot(delta[~has_ci], y[~has_ci], "x", color="C3", label="no CI (n < 2)")
    ax.set_yticks(y, _labels(rows))
    for tick, flag in zip(ax.get_yticklabels(), bad, strict=True):
        tick.set_color(NOT_LEARNED if flag else "black")
    ax.set_xlabel(f"Δ {metric_title(settings.metric)} vs baseline ({unit})")
    ax.set_title("Difference from the baseline")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="x-small")
    return _save(fig, path)


def _xerr(centre: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Error-bar lengths below and above ``centre``. The centre is the interval's own estimate,
    computed apart (logged metrics against predictions): a degenerate interval (every seed equal,
    every image alike) can sit 1e-14 off it, which matplotlib refuses as a negative length."""
    return np.clip(np.stack([centre - low, high - centre]), 0, None)


def points_plot(runs: pd.DataFrame, table: pd.DataFrame, settings: Settings, path: Path,
                references: pd.DataFrame | None = None) -> Path:
    """The metric of every run (one point per seed; red x: did not learn) with the
    configuration's mean and CI (over seeds + test images when known, else over seeds), and a line
    per reference (chance, majority class, the trained references)."""
    m, scale = settings.metric, settings.scale
    rows = table[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(10, _height(len(rows))))
    rng = np.random.default_rng(0)
    _reference_lines(ax, references, m, scale)
    learned = runs["learned"] if "learned" in runs else pd.Series(np.nan, index=runs.index)
    shown = set()
    for i, cfg in rows.iterrows():
        sub = runs["config_key"] == cfg["config_key"]
        values = runs.loc[sub, m].to_numpy(float) * scale
        bad = learned[sub].eq(False).to_numpy()
        jitter = i + rng.uniform(-0.12, 0.12, len(values))
        for mask, style, label in ((~bad, dict(marker="o", color="C0", alpha=0.6), "run (seed)"),
                                   (bad, dict(marker="x", color=NOT_LEARNED), "run that did not learn")):
            if mask.any():
                ax.plot(values[mask], jitter[mask], ls="none", ms=5,
                        label=None if label in shown else label, **style)
                shown.add(label)
        mean = cfg[f"{m}_mean"]
        total = np.isfinite(cfg["ci_total_low"])
        low, high = (cfg["ci_total_low"], cfg["ci_total_high"]) if total else (cfg[f"{m}_t_low"],
                                                                               cfg[f"{m}_t_high"])
        label = f"mean, {settings.confidence:.0%} CI over seeds" + (" + test images" if total else "")
        if np.isfinite(low):
            ax.errorbar([mean], [i + 0.3], xerr=_xerr(np.array([mean]), np.array([low]), np.array([high])),
                        fmt="D", color="C1", capsize=3, ms=5, label=None if label in shown else label)
            shown.add(label)
        else:
            ax.plot([mean], [i + 0.3], "D", color="C1", ms=5)
    ax.set_yticks(np.arange(len(rows)), _labels(rows))
    suffix = " (%)" if settings.unit else ""
    ax.set_xlabel(metric_title(m) + suffix)
    ax.set_title("Every run, by configuration")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="x-small")
    return _save(fig, path)


def curve_configs(table: pd.DataFrame, max_configs: int) -> pd.DataFrame:
    """The rows drawn as learning curves: the baseline and the largest |Δ|, max_configs in all."""
    others = table.iloc[1:].assign(size=lambda t: t["delta"].abs()).sort_values(
        "size", ascending=False, na_position="last")
    return pd.concat([table.iloc[:1], others]).head(max(1, max_configs))


def learning_curves(history: pd.DataFrame, runs: pd.DataFrame, chosen: pd.DataFrame,
                    path: Path) -> Path | None:
    """Mean val_acc and val_loss per epoch with ± sd bands over seeds, per chosen configuration.

    ``history`` is runs.epoch_history; None when no run logged per-epoch metrics.
    """
    # Epochs count from 1; a final metric of the same name (val_loss) may sit at step 0.
    history = history[history["step"] >= 1]
    if history.empty:
        return None
    key_of = runs.set_index("run_id")["config_key"]
    history = history.assign(config_key=history["run_id"].map(key_of))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("val_acc", "val_loss"), strict=True):
        scale = metric_scale(key)
        for i, (_, cfg) in enumerate(chosen.iterrows()):
            sub = history[(history["key"] == key) & (history["config_key"] == cfg["config_key"])]
            if sub.empty:
                continue
            agg = sub.groupby("step")["value"].agg(["mean", "std", "count"]) * [scale, scale, 1]
            color = f"C{i % 10}"
            ax.plot(agg.index, agg["mean"], color=color, label=cfg["config"])
            band = agg["std"].fillna(0.0)
            ax.fill_between(agg.index, agg["mean"] - band, agg["mean"] + band, color=color,
                            alpha=0.2)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key + (" (%)" if scale == 100 else ""))
        ax.set_title(f"{key}: mean ± sd over seeds")
    axes[0].legend(fontsize="x-small", loc="best")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
