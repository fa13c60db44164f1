"""The metrics with per-image scores (stats.intervals.image_scores): the ones that get intervals over
seeds and test images, and the ones an adaptive sweep (sweep.until=resolved) can judge."""

IMAGE_METRICS = ("accuracy", "balanced_accuracy", "roc_auc_ovr", "ece")
LOWER_IS_BETTER = ("ece",)
