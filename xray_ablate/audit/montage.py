"""The audit's montage: test images with their lung outline and each method's heat map, correct and wrong."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from xray_ablate.config.choices import CLASSES

PER_KIND = 4  # correct and wrong predictions shown


def montage_rows(correct: np.ndarray, per_kind: int = PER_KIND) -> np.ndarray:
    """Up to ``per_kind`` correct then ``per_kind`` wrong positions, in order; when one kind runs
    short the other fills the panels, so the montage shows 2 * per_kind images when there are."""
    right, wrong = np.flatnonzero(correct), np.flatnonzero(~correct)
    n_right = min(len(right), max(per_kind, 2 * per_kind - len(wrong)))
    n_wrong = min(len(wrong), 2 * per_kind - n_right)
    return np.concatenate([right[:n_right], wrong[:n_wrong]])


def montage_figure(images: np.ndarray, lung_masks: np.ndarray, maps: dict[str, np.ndarray],
                   per_image: pd.DataFrame, labels: dict[str, str]) -> Figure:
    """The same images under each method's map (``maps``: method -> (n, H, W); ``labels``: its name),
    one method after the other, two rows each (correct, then wrong predictions)."""
    rows = montage_rows(per_image["correct"].to_numpy(bool))
    cols = PER_KIND
    fig, axes = plt.subplots(2 * len(maps), cols, figsize=(2.6 * cols, 2.8 * 2 * len(maps)), squeeze=False)
    for ax in axes.flat:  # no ticks at all: placing each title would otherwise lay out hidden ticks
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for block, (method, values) in enumerate(maps.items()):
        for ax, i in zip(axes[2 * block:2 * block + 2].flat, rows, strict=False):
            row = per_image.iloc[i]
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            peak = values[i].max()
            if peak > 0:
                ax.imshow(values[i] / peak, cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.contour(lung_masks[i], levels=[0.5], colors="lime", linewidths=0.8)
            verdict = "correct" if row["correct"] else "wrong"
            ax.set_title(f"{CLASSES[row['label']]} -> {CLASSES[row['pred']]} ({verdict})\n"
                         f"{labels[method]}: outside lungs {row[f'outside_lung_{method}']:.0%}", fontsize=8)
    height = fig.get_figheight()  # inches: fixed margins (tight_layout measured every text again)
    fig.suptitle(f"{' / '.join(labels.values())} for the predicted class; green: lung outline", fontsize=9,
                 y=1 - 0.1 / height)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.7 / height, wspace=0.05, hspace=0.3)
    return fig
