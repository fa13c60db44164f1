"""The report's figures (matplotlib, Agg backend): forest plot, points over seeds, learning curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from xray_ablate.report.tables import Settings, metric_scale, metric_title

DPI = 120


def _height(rows: int) -> float:
    return max(2.5, 0.45 * rows + 1.2)


def forest_plot(table: pd.DataFrame, settings: Settings, path: Path) -> Path:
    """Δ of each configuration against the baseline with its CI; the band is ± the baseline sd."""
    rows = table.iloc[1:][::-1]
    unit = settings.unit or "units"
    fig, ax = plt.subplots(figsize=(7.5, _height(len(rows))))
    y = np.arange(len(rows))
    sd = table.iloc[0][f"{settings.metric}_sd"]
    if np.isfinite(sd):
        ax.axvspan(-sd, sd, color="0.9", label=f"± baseline sd ({sd:.2f} {unit})")
    ax.axvline(0, color="0.3", lw=1)
    delta = rows["delta"].to_numpy(float)
    low, high = rows["delta_low"].to_numpy(float), rows["delta_high"].to_numpy(float)
    has_ci = np.isfinite(low) & np.isfinite(high)
    ax.errorbar(delta[has_ci], y[has_ci], xerr=[delta[has_ci] - low[has_ci],
                                                high[has_ci] - delta[has_ci]],
                fmt="o", color="C0", capsize=3, label=f"Δ with {settings.confidence:.0%} CI")
    if (~has_ci).any():
        ax.plot(delta[~has_ci], y[~has_ci], "x", color="C3", label="no CI (n < 2)")
    ax.set_yticks(y, rows["config"])
    ax.set_xlabel(f"Δ {metric_title(settings.metric)} vs baseline ({unit})")
    ax.set_title("Difference from the baseline")
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def points_plot(runs: pd.DataFrame, table: pd.DataFrame, settings: Settings, path: Path) -> Path:
    """The metric of every run (one point per seed) with the configuration's mean and t-CI."""
    m, scale = settings.metric, settings.scale
    rows = table[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, _height(len(rows))))
    rng = np.random.default_rng(0)
    for i, cfg in rows.iterrows():
        values = runs.loc[runs["config_key"] == cfg["config_key"], m].to_numpy(float) * scale
        ax.plot(values, i + rng.uniform(-0.12, 0.12, len(values)), "o", color="C0", alpha=0.6,
                ms=4, label="run (seed)" if i == 0 else None)
        mean, low, high = cfg[f"{m}_mean"], cfg[f"{m}_t_low"], cfg[f"{m}_t_high"]
        if np.isfinite(low):
            ax.errorbar([mean], [i + 0.3], xerr=[[mean - low], [high - mean]], fmt="D", color="C1",
                        capsize=3, ms=5, label=f"mean, {settings.confidence:.0%} CI" if i == 0 else None)
        else:
            ax.plot([mean], [i + 0.3], "D", color="C1", ms=5)
    ax.set_yticks(np.arange(len(rows)), rows["config"])
    suffix = " (%)" if settings.unit else ""
    ax.set_xlabel(metric_title(m) + suffix)
    ax.set_title("Every run, by configuration")
    ax.legend(loc="best", fontsize="small")
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
