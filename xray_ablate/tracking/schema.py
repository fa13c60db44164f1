"""Names of what a run records in MLflow: the contract between training, sweeps and the report."""

from __future__ import annotations

from xray_ablate.config.choices import CLASSES

FACTOR_TAG = "factor.{}"  # e.g. factor.dataset = masked; the factors: xray_ablate.config.factors

KIND = "xray.kind"  # train | canary | sweep | report | quality
CANARY = "canary"  # the kind of a sweep's positive-control run (audit.canary): no factor table reads it
CANARY_VERDICT = "xray.canary_verdict"  # on a sweep's parent run, from its report: what the canary showed
SEED = "xray.seed"
CONFIG_KEY = "xray.config_key"  # groups the seeds of one configuration
SWEEP_ID = "xray.sweep_id"  # the sweep that created the run
SWEEP_MEMBER = "xray.in_sweep.{}"  # "1" on every run a sweep counts: its own and those it reused
EXPERIMENT = "xray.experiment"  # the experiment= config name, or "none"
SPLIT_HASH = "xray.split_hash"
SPLIT_MODE = "xray.split_mode"  # fixed | per_seed
FINGERPRINT = "xray.dataset_fingerprint"
CODE_VERSION = "xray.code_version"  # a resumed run's: each attempt's, "<first> then <next>", when they differ
RESUMED_PARAMS = "xray.resumed_params"  # a resumed run's settings that changed, "key: first -> now; ..."
EVALUATED = "xray.evaluated"  # JSON {"sets": [...], "subgroups": [...]}: what a finished run evaluated
DEVICE = "xray.device"  # cpu | cuda | mps: part of the config key
PARENT_RUN = "mlflow.parentRunId"
LEARNED = "xray.learned"  # "true" | "false": evaluation.learning_check's verdict
LEARNED_REASON = "xray.learned_reason"  # why not, e.g. "predicts covid for 100% of test images"
# Folder of a sweep's parent run: one JSON per dataset variant (raw.json, masked.json), each
# references.References.as_dict(): trivial baselines and source probes on the test split.
REFERENCES_DIR = "references"
PREDICTIONS = "predictions.csv"  # artifact of every training run: image_id, label, prob_<class>, attributes
AUDIT_CSV = "audit/audit.csv"  # saliency audit per image: image_id, label, pred, shares per method
AUDIT_MONTAGE = "audit/montage.png"  # test images with lung outline and each audit method's map
PROBE_CSV = "probe/probe.csv"  # feature probes per test image: image_id, probe_<attribute> (1: right)

# Per-epoch metrics (step = epoch, from 1): train_loss, train_acc, val_loss, val_acc.


def final_metric_names(prefix: str) -> list[str]:
    """Final metrics of a split, prefix 'test' or 'val'."""
    names = [f"{prefix}_{m}" for m in ("accuracy", "balanced_accuracy", "macro_precision",
                                        "macro_recall", "macro_f1", "roc_auc_ovr")]
    # val_loss is the per-epoch series; the chosen checkpoint's value is best_val_loss.
    names.append("test_loss" if prefix == "test" else "best_val_loss")
    for cls in CLASSES:
        names += [f"{prefix}_{m}_{cls}" for m in ("precision", "recall", "f1", "support")]
    return names
