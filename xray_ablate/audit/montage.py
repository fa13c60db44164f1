"""The audit's montage: test images with their lung outline and Grad-CAM heat map, correct and wrong."""

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


def montage_figure(images: np.ndarray, lung_masks: np.ndarray, cams: np.ndarray,
                   per_image: pd.DataFrame) -> Figure:
    rows = montage_rows(per_image["correct"].to_numpy(bool))
    cols = PER_KIND
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 5.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, rows, strict=False):
        row = per_image.iloc[i]
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        peak = cams[i].max()
        if peak > 0:
            ax.imshow(cams[i] / peak, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.contour(lung_masks[i], levels=[0.5], colors="lime", linewidths=0.8)
        verdict = "correct" if row["correct"] else "wrong"
        ax.set_title(f"{CLASSES[row['label']]} -> {CLASSES[row['pred']]} ({verdict})\n"
                     f"outside lungs {row['outside_lung_gradcam']:.0%}", fontsize=8)
    fig.suptitle("Grad-CAM for the predicted class; green: lung outline", fontsize=9)
    fig.tight_layout()
    return fig
