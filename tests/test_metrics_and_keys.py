"""Metric definitions and the config key that groups seeds."""

import numpy as np
import pytest

from xray_ablate.evaluation import classification_metrics
from xray_ablate.tracking.keys import config_key


def test_a_class_absent_from_the_test_split_does_not_count_as_zero():
    y = np.array([0, 0, 1, 1, 2, 2])  # no healthy image
    perfect = np.eye(4)[y]
    m = classification_metrics(y, perfect, "test")
    assert m["test_accuracy"] == 1.0 and m["test_balanced_accuracy"] == 1.0
    assert m["test_macro_f1"] == 1.0 and m["test_macro_recall"] == 1.0
    assert np.isnan(m["test_f1_healthy"]) and np.isnan(m["test_recall_healthy"])
    assert m["test_support_healthy"] == 0
    assert np.isnan(m["test_roc_auc_ovr"])


def test_per_class_and_macro_metrics_equal_hand_counts():
    y = np.array([0, 0, 1, 1, 2, 3])
    pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y, np.eye(4)[pred], "val")
    assert m["val_accuracy"] == pytest.approx(4 / 6)
    assert m["val_precision_bacterial"] == pytest.approx(1 / 2)  # 1 of 2 predicted bacterial
    assert m["val_recall_viral"] == 1.0 and m["val_precision_viral"] == pytest.approx(2 / 3)
    assert m["val_f1_healthy"] == 0.0
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) / (2 / 3 + 1), 1.0, 0.0]
    assert m["val_macro_f1"] == pytest.approx(np.mean(f1))


@pytest.mark.slow
def test_config_key_ignores_seed_paths_and_sweep_design_but_not_semantics(make_cfg):
    base = config_key(make_cfg(), "cpu")
    for same in (["seed=3"], ["full_factorial=true"], ["threads=1"], ["num_workers=2"],
                 ["quality.device=cpu"], ["quality.analysis_size=256"], ["tracking.experiment=x"],
                 ["dataset.root=/elsewhere"], ["repeats=7"]):
        assert config_key(make_cfg(*same), "cpu") == base, same
    for different in (["class_weights=on"], ["image_size=48"], ["trainer.lr=0.01"],
                      ["split.seed=1"], ["dataset=raw"]):
        assert config_key(make_cfg(*different), "cpu") != base, different
    assert config_key(make_cfg(), "cuda") != base  # bf16 on CUDA is not a seed of the CPU runs
    # BRISQUE settings count once the filter uses them.
    on = config_key(make_cfg("brisque_filter=on"), "cpu")
    assert config_key(make_cfg("brisque_filter=on", "quality.analysis_size=256"), "cpu") != on
