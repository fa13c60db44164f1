"""The quality report: quality.md, PNG figures and scores.csv for one dataset's BRISQUE scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from xray_ablate.config.choices import CLASSES
from xray_ablate.quality.filter import FilterResult, iqr_fences
from xray_ablate.quality.stats import ClassComparison, compare_classes

FIGURES = {"histogram": "histogram.png", "boxplots": "boxplots.png", "outliers": "outliers.png"}


@dataclass
class QualityReport:
    markdown: Path
    summary: pd.DataFrame  # one row per class
    comparison: ClassComparison
    fences: tuple[float, float]  # over all scored images

    def metrics(self) -> dict[str, float]:
        """Headline numbers to log to MLflow (NaN statistics are left out)."""
        c = self.comparison
        out = {"kruskal_h": c.kruskal_h, "kruskal_p": c.kruskal_p, "epsilon_sq": c.epsilon_sq,
               "n_scored": float(self.summary["scored"].sum()),
               "n_unscorable": float(self.summary["unscorable"].sum())}
        for row in self.summary.itertuples():
            out[f"median_{row.cls}"] = row.median
            out[f"outliers_{row.cls}"] = float(row.below + row.above)
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}


def write_report(out_dir: Path, frame: pd.DataFrame, *, header: str, fences: str, factor: float,
                 preview: FilterResult) -> QualityReport:
    """Write the report for ``frame`` (image_id, cls, split, score, status) into ``out_dir``.

    ``preview`` is what brisque_filter=on does with these scores (train+val fences).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = frame["score"].notna().to_numpy()
    bounds = iqr_fences(frame["score"], fences, factor)
    summary = class_summary(frame, bounds)
    comparison = compare_classes({c: frame.loc[frame["cls"] == c, "score"].to_numpy()
                                  for c in CLASSES})
    frame.to_csv(out_dir / "scores.csv", index=False)
    _histogram(frame[scored], bounds, out_dir / FIGURES["histogram"])
    _boxplots(frame[scored], factor, out_dir / FIGURES["boxplots"])
    _outliers(summary, out_dir / FIGURES["outliers"])
    text = _markdown(header, frame, summary, comparison, bounds, fences, factor, preview)
    path = out_dir / "quality.md"
    path.write_text(text)
    return QualityReport(markdown=path, summary=summary, comparison=comparison, fences=bounds)


def class_summary(frame: pd.DataFrame, bounds: tuple[float, float]) -> pd.DataFrame:
    rows = []
    for cls in CLASSES:
        values = frame.loc[frame["cls"] == cls, "score"].to_numpy(float)
        ok = values[np.isfinite(values)]
        q1, median, q3 = np.quantile(ok, [0.25, 0.5, 0.75]) if ok.size else (np.nan,) * 3
        rows.append({"cls": cls, "images": values.size, "scored": ok.size,
                     "unscorable": values.size - ok.size, "median": median, "q1": q1, "q3": q3,
                     "mean": ok.mean() if ok.size else np.nan,
                     "below": int((ok < bounds[0]).sum()), "above": int((ok > bounds[1]).sum())})
    return pd.DataFrame(rows)


def _histogram(frame: pd.DataFrame, bounds: tuple[float, float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.histogram_bin_edges(frame["score"], bins="auto")
    ax.hist(frame["score"], bins=bins, color="0.8", label="all")
    for cls in CLASSES:
        ax.hist(frame.loc[frame["cls"] == cls, "score"], bins=bins, histtype="step", label=cls)
    for value in bounds:
        if np.isfinite(value):
            ax.axvline(value, color="k", linestyle="--", linewidth=1)
    ax.set(xlabel="BRISQUE (lower = better)", ylabel="images", title="BRISQUE scores (dashed: fences)")
    ax.legend()
    _save(fig, path)


def _boxplots(frame: pd.DataFrame, factor: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    present = [c for c in CLASSES if (frame["cls"] == c).any()]
    ax.boxplot([frame.loc[frame["cls"] == c, "score"] for c in present], whis=factor)
    ax.set_xticks(range(1, len(present) + 1), present)
    ax.set(ylabel="BRISQUE (lower = better)", title=f"BRISQUE per class (whiskers {factor}xIQR)")
    _save(fig, path)


def _outliers(summary: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(summary))
    ax.bar(x - 0.2, summary["below"], width=0.4, label="below low fence")
    ax.bar(x + 0.2, summary["above"], width=0.4, label="above high fence")
    ax.set_xticks(x, summary["cls"])
    ax.set(ylabel="images", title="BRISQUE outliers per class")
    ax.legend()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(header: str, frame: pd.DataFrame, summary: pd.DataFrame, cmp: ClassComparison,
              bounds: tuple[float, float], fences: str, factor: float,
              preview: FilterResult) -> str:
    table = summary.rename(columns={"cls": "class", "below": "below low fence",
                                    "above": "above high fence"})
    pairs = cmp.pairs.assign(pair=cmp.pairs["a"] + " vs " + cmp.pairs["b"])
    pairs = pairs[["pair", "n_a", "n_b", "u", "p", "p_holm", "reject", "rank_biserial"]].rename(
        columns={"u": "U", "p_holm": "p (Holm)", "reject": f"significant (α={cmp.alpha})",
                 "rank_biserial": "rank-biserial r"})
    unscorable = frame[frame["score"].isna()][["image_id", "cls", "split", "status"]]
    removed = ", ".join(f"{c} {n}" for c, n in preview.removed_per_class.items())
    kept = ", ".join(f"{c} {n}" for c, n in preview.unscorable_per_class.items())
    lines = [
        "# BRISQUE image quality", "", header, "",
        "BRISQUE (piq.brisque) is a no-reference quality score; lower is better.", "",
        "## Scores per class", "",
        table.to_markdown(index=False, floatfmt=".2f"), "",
        (f"Fences ({factor}×IQR, {fences}) over all {int(summary['scored'].sum())} scored "
         f"images: {_fmt(bounds[0])} .. {_fmt(bounds[1])}."), "",
        f"![histogram]({FIGURES['histogram']})", "",
        f"![box plots]({FIGURES['boxplots']})", "",
        "## Outliers per class", "",
        f"![outliers]({FIGURES['outliers']})", "",
        "## Class comparison", "",
        (f"Kruskal–Wallis across {cmp.df + 1} classes (n = {cmp.n}): H = {cmp.kruskal_h:.3f}, "
         f"df = {cmp.df}, p = {cmp.kruskal_p:.3g}, ε² = {cmp.epsilon_sq:.3f}."), "",
        ("Pairwise two-sided Mann–Whitney U tests, Holm-corrected over all pairs. The effect "
         "size r = 2U/(n_a·n_b) − 1 equals Cliff's δ; r > 0 means the first class scores higher "
         "(worse quality)."), "",
        pairs.to_markdown(index=False, floatfmt=".3g") if len(pairs) else "(fewer than two classes)",
        "",
        "## What brisque_filter=on removes", "",
        (f"Fences from the train+val scores only ({factor}×IQR, {fences}): "
         f"{_fmt(preview.fences[0])} .. {_fmt(preview.fences[1])}. Removed train+val images: "
         f"{removed}. Unscorable train+val images (kept): {kept}. Test images beyond the "
         f"fences (kept; the test split never changes): {int(preview.test_outlier.sum())}."), "",
        "## Unscorable images", "",
        unscorable.to_markdown(index=False) if len(unscorable) else "None.", "",
    ]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "open" if not np.isfinite(value) else f"{value:.2f}"
