"""BRISQUE scores, the IQR filter and the quality report (issue #4)."""

from __future__ import annotations

import shutil
import sys
import urllib.request
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from scipy import stats
from statsmodels.stats.multitest import multipletests

from xray_ablate.config.choices import CLASSES
from xray_ablate.config.load import to_config
from xray_ablate.config.schema import QualityConfig
from xray_ablate.data.masks import PreprocessOptions
from xray_ablate.data.prepare import DataConfig, prepare
from xray_ablate.data.settings import data_config
from xray_ablate.errors import UserError
from xray_ablate.paths import CONFIG_DIR
from xray_ablate.quality import __main__ as quality_cli
from xray_ablate.quality import filter as quality_filter
from xray_ablate.quality import scores as scores_module
from xray_ablate.quality.__main__ import run as run_report
from xray_ablate.quality.filter import beyond, brisque_filter, iqr_fences
from xray_ablate.quality.scores import (
    brisque_scores,
    score_files,
    score_images,
    scores_key,
    scores_path,
)
from xray_ablate.quality.stats import compare_classes
from xray_ablate.quality.weights import WEIGHTS_NAME
from xray_ablate.tracking import schema
from xray_ablate.tracking.recorder import Recorder

# --- fixtures ------------------------------------------------------------------------------

def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return to_config(compose("config", overrides=["backbone=cnn16_gap", *overrides]))


def _synthetic_cfg(root: Path, *overrides: str):
    # 96-px phantoms scored at 96 px: no resize, ~3 ms per image.
    return _compose("dataset=raw", f"dataset.root={root}", "image_size=32",
                    "quality.analysis_size=96", "num_workers=1", *overrides)


@pytest.fixture
def synthetic(synthetic_root, cache_dir):
    cfg = _synthetic_cfg(synthetic_root)
    return cfg, prepare(data_config(cfg))


def _no_piq(*args, **kwargs):
    raise AssertionError("BRISQUE was computed")


def _planted_scores(data) -> pd.DataFrame:
    """Scores in 25..35 (fences ~20..40) with outliers planted in train, val and test, and one
    unscorable row."""
    rng = np.random.default_rng(0)
    split = data.table["split"].to_numpy()
    values = rng.uniform(25, 35, len(split))
    train, val, test = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    values[train[0]], values[train[1]], values[val[0]], values[test[0]] = 90, -40, 95, 99
    status = np.full(len(split), "ok", dtype=object)
    values[train[2]], status[train[2]] = np.nan, "unscorable: planted"
    return pd.DataFrame({"image_id": data.table["image_id"], "score": values, "status": status})


# --- scores --------------------------------------------------------------------------------

def test_scores_are_cached_and_reused(synthetic, cache_dir, brisque_weights, monkeypatch):
    cfg, data = synthetic
    settings = cfg.quality
    first = brisque_scores(data, settings, cache_dir, workers=1)
    assert list(first.columns) == ["image_id", "score", "status"]
    assert list(first["image_id"]) == list(data.table["image_id"])
    assert (first["status"] == "ok").all() and np.isfinite(first["score"]).all()
    path = cache_dir / "brisque" / f"{scores_key(data.fingerprint, settings)}.csv"
    assert path == scores_path(cache_dir, scores_key(data.fingerprint, settings)) and path.is_file()

    monkeypatch.setattr(scores_module, "brisque", _no_piq)
    second = brisque_scores(data, settings, cache_dir, workers=1)
    pd.testing.assert_frame_equal(first, second)
    # Device and batching never change a score; the analysis settings do.
    key = scores_key(data.fingerprint, settings)
    assert scores_key(data.fingerprint, replace(settings, device="cuda", batch_size=2)) == key
    assert scores_key(data.fingerprint, replace(settings, analysis_size=128)) != key


def test_cache_scores_only_missing_images(synthetic, cache_dir, brisque_weights, monkeypatch):
    cfg, data = synthetic
    settings = cfg.quality
    first = brisque_scores(data, settings, cache_dir, workers=1)
    path = scores_path(cache_dir, scores_key(data.fingerprint, settings))
    pd.read_csv(path).iloc[3:].to_csv(path, index=False)  # forget three images
    calls = []
    real = scores_module.brisque
    monkeypatch.setattr(scores_module, "brisque", lambda x, **kw: calls.append(len(x)) or real(x, **kw))
    again = brisque_scores(data, settings, cache_dir, workers=1)
    assert sum(calls) == 3
    np.testing.assert_allclose(again["score"], first["score"])


@pytest.mark.slow
def test_process_pool_gives_the_same_scores(synthetic, brisque_weights, monkeypatch):
    cfg, data = synthetic
    settings = cfg.quality
    paths = list(data.table["image_path"][:6])
    alone = score_files(paths, settings, workers=1)
    monkeypatch.setattr(scores_module, "_POOL_MIN_IMAGES", 1)
    pooled = score_files(paths, settings, workers=2)
    pd.testing.assert_frame_equal(alone, pooled)


def test_device_path_in_batches_matches_one_by_one(tmp_path, brisque_weights):
    """The GPU path (shape groups, batches, decode threads) run on the CPU."""
    rng = np.random.default_rng(2)
    paths = []
    for i, shape in enumerate([(48, 64)] * 5 + [(64, 48)] * 3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    paths.insert(3, tmp_path / "blank.png")
    Image.new("L", (64, 48), 0).save(paths[3])
    paths.insert(6, tmp_path / "broken.png")
    paths[6].write_bytes(b"not an image")
    settings = QualityConfig(analysis_size=64, batch_size=2)
    alone = score_files(paths, settings, workers=1)
    in_batches = scores_module._score_on_device(paths, settings, torch.device("cpu"), 2, "test")
    in_batches = pd.DataFrame(in_batches, columns=["score", "status"])
    pd.testing.assert_frame_equal(alone, in_batches, rtol=1e-4)
    assert alone["status"][3].startswith("unscorable: ")
    assert alone["status"][6].startswith("unreadable: ")
    assert (alone["status"].drop([3, 6]) == "ok").all()


def test_blank_image_is_unscorable(synthetic_root, tmp_path, cache_dir, brisque_weights):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    blank = sorted((root / "images").iterdir())[5]
    with Image.open(blank) as im:
        Image.new(im.mode, im.size, 0).save(blank)
    cfg = _synthetic_cfg(root)
    data = prepare(data_config(cfg))
    scores = brisque_scores(data, cfg.quality, cache_dir, 1)
    row = scores["image_id"] == blank.stem
    assert row.sum() == 1
    assert np.isnan(scores.loc[row, "score"]).all()
    assert scores.loc[row, "status"].item() == (
        "unscorable: Expected image with non zero variance of pixel values")
    assert (scores.loc[~row, "status"] == "ok").all()
    assert np.isfinite(scores.loc[~row, "score"]).all()


def test_bad_image_in_a_batch_is_isolated(brisque_weights):
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    halves = np.zeros((64, 64), np.uint8)
    halves[32:] = 255  # not constant, yet piq asserts on it
    got = score_images([noisy, halves, noisy], QualityConfig(), torch.device("cpu"))
    assert got[0][1] == got[2][1] == "ok"
    assert got[1][1].startswith("unscorable: Expected input tensor") and np.isnan(got[1][0])
    assert got[0][0] == pytest.approx(got[2][0])


def test_missing_weights_give_a_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(image)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_NAME
    with pytest.raises(UserError) as err:
        score_files([image], QualityConfig(), workers=1)
    message = str(err.value)
    assert f"BRISQUE SVM weights not found at {expected}" in message
    assert "cp " in message and "TORCH_HOME" in message


@pytest.mark.parametrize("override, message", [
    ("quality.nope=1", "error: Could not override 'quality.nope'.; Key 'nope' not in 'QualityConfig'"),
    ("+quality.bach_size=8", "error: quality.bach_size is not a setting; did you mean quality.batch_size?"),
    ("quality.device=gpu", "error: quality.device must be auto, cpu, cuda or cuda:N, not 'gpu'"),
])
def test_cli_bad_setting_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.setattr(sys, "argv", ["xray_ablate.quality", override, f"paths.root_dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_:
        quality_cli.cli()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip() == message, err
    assert not (tmp_path / "mlruns").exists()


def test_cli_without_weights_exits_2_with_the_message(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(sys, "argv", [
        "xray_ablate.quality", "dataset=demo", "dataset.synthetic.n=40", "dataset.synthetic.size=96",
        "image_size=32", "backbone=cnn16_gap", "num_workers=1", f"tracking.uri=sqlite:///{tmp_path}/m.db",
        f"hydra.run.dir={tmp_path}/hydra"])
    with pytest.raises(SystemExit) as exit_:
        quality_cli.main()
    expected = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_NAME
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith(f"error: BRISQUE SVM weights not found at {expected}")
    assert "Traceback" not in err
    assert not (tmp_path / "m.db").exists()  # failed before any run was created


# --- filter --------------------------------------------------------------------------------

def test_iqr_fences_match_numpy_quantiles():
    values = np.array([3.0, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 40, -30, np.nan, 8, 9, 7, 9])
    finite = values[np.isfinite(values)]
    q1, q3 = np.quantile(finite, [0.25, 0.75])
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    assert iqr_fences(values) == (pytest.approx(low), pytest.approx(high))
    expected = (values < low) | (values > high)
    np.testing.assert_array_equal(beyond(values, iqr_fences(values)), expected)
    assert np.flatnonzero(expected).tolist() == [11, 12]  # 40 and -30; NaN is never beyond
    upper = iqr_fences(values, "upper")
    assert upper == (-np.inf, pytest.approx(high))
    assert np.flatnonzero(beyond(values, upper)).tolist() == [11]
    assert iqr_fences(values, factor=3.0)[1] == pytest.approx(q3 + 3 * (q3 - q1))
    with pytest.raises(ValueError, match="fences must be one of"):
        iqr_fences(values, "lower")  # a bug: user input is checked by the config schema
    with pytest.raises(UserError, match="brisque_filter.fences must be one of both, upper, not 'lower'"):
        _compose("brisque_filter=on", "brisque_filter.fences=lower")


@pytest.mark.parametrize("fences", ["both", "upper"])
def test_filter_removes_exactly_train_val_points_beyond_the_fences(synthetic, synthetic_root,
                                                                   monkeypatch, fences):
    _, data = synthetic
    cfg = _synthetic_cfg(synthetic_root, "brisque_filter=on", f"brisque_filter.fences={fences}")
    planted = _planted_scores(data)
    monkeypatch.setattr(quality_filter, "brisque_scores", lambda *a, **k: planted)
    result = brisque_filter(data, cfg)

    values = planted["score"].to_numpy()
    split, cls = data.table["split"].to_numpy(), data.table["cls"].to_numpy()
    trainval = split != "test"
    q1, q3 = np.nanquantile(values[trainval], [0.25, 0.75])
    low = q1 - 1.5 * (q3 - q1) if fences == "both" else -np.inf
    high = q3 + 1.5 * (q3 - q1)
    out = (values < low) | (values > high)
    assert result.fences == (pytest.approx(low), pytest.approx(high))
    np.testing.assert_array_equal(result.keep, ~(out & trainval))
    np.testing.assert_array_equal(result.test_outlier, out & ~trainval)
    assert result.keep[split == "test"].all() and result.test_outlier.sum() == 1
    assert (~result.keep).sum() == (3 if fences == "both" else 2)  # 90, 95 (+ -40)
    assert result.removed_per_class == {c: int((out & trainval & (cls == c)).sum()) for c in CLASSES}
    assert sum(result.unscorable_per_class.values()) == 1 and result.keep[np.isnan(values)].all()
    metrics = result.metrics()
    assert metrics["brisque_removed_total"] == (~result.keep).sum()
    assert metrics["brisque_unscorable"] == 1 and metrics["brisque_test_outliers"] == 1
    assert ("brisque_fence_low" in metrics) == (fences == "both")


def test_test_split_is_identical_with_the_filter_on_and_off(synthetic_root, cache_dir, monkeypatch):
    off_cfg = _synthetic_cfg(synthetic_root, "brisque_filter=off")
    on_cfg = _synthetic_cfg(synthetic_root, "brisque_filter=on")
    assert type(off_cfg.brisque_filter) is type(on_cfg.brisque_filter)  # one shape
    off_data, on_data = prepare(data_config(off_cfg)), prepare(data_config(on_cfg))
    assert off_data.manifest_hash == on_data.manifest_hash

    monkeypatch.setattr(scores_module, "brisque", _no_piq)  # off scores nothing
    off = brisque_filter(off_data, off_cfg)
    assert off.keep.all() and off.scores is None and not off.test_outlier.any()
    assert sum(off.removed_per_class.values()) == 0

    planted = _planted_scores(on_data)
    monkeypatch.setattr(quality_filter, "brisque_scores", lambda *a, **k: planted)
    on = brisque_filter(on_data, on_cfg)
    assert (~on.keep).sum() == 3

    def test_ids(data, result):
        rows = result.keep & (data.table["split"] == "test").to_numpy()
        return list(data.table["image_id"][rows])

    assert test_ids(on_data, on) == test_ids(off_data, off) == list(
        off_data.table["image_id"][off_data.split_indices("test")])


# --- statistics and the report ---------------------------------------------------------------

def test_statistics_equal_scipy():
    rng = np.random.default_rng(1)
    groups = {"bacterial": rng.normal(25, 6, 30), "viral": rng.normal(22, 6, 25),
              "covid": np.append(rng.normal(27, 6, 20), np.nan), "healthy": rng.normal(18, 5, 28)}
    clean = {c: v[np.isfinite(v)] for c, v in groups.items()}
    got = compare_classes(groups)

    h, p = stats.kruskal(*clean.values())
    n = sum(v.size for v in clean.values())
    assert (got.kruskal_h, got.kruskal_p, got.n, got.df) == (pytest.approx(h), pytest.approx(p), n, 3)
    assert got.epsilon_sq == pytest.approx(h / (n - 1))
    assert len(got.pairs) == 6
    raw = []
    for row, (a, b) in zip(got.pairs.itertuples(), combinations(clean, 2), strict=False):
        u, pair_p = stats.mannwhitneyu(clean[a], clean[b], alternative="two-sided")
        raw.append(pair_p)
        assert (row.a, row.b, row.u, row.p) == (a, b, pytest.approx(u), pytest.approx(pair_p))
        cliff = np.sign(clean[a][:, None] - clean[b][None, :]).mean()
        assert row.rank_biserial == pytest.approx(2 * u / (clean[a].size * clean[b].size) - 1)
        assert row.rank_biserial == pytest.approx(cliff)
    reject, holm, _, _ = multipletests(raw, alpha=0.05, method="holm")
    np.testing.assert_allclose(got.pairs["p_holm"], holm)
    np.testing.assert_array_equal(got.pairs["reject"], reject)


@pytest.mark.slow
def test_quality_report_files_mlflow_and_statistics(tmp_path, cache_dir, brisque_weights,
                                                   monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = _compose("dataset=demo", "dataset.synthetic.n=40", "dataset.synthetic.size=96",
                   "image_size=32", "quality.analysis_size=96", "num_workers=1",
                   f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/artifacts",
                   f"paths.reports_dir={tmp_path}/reports", "tracking.experiment=quality-test")
    markdown = run_report(cfg)
    out = markdown.parent
    assert out.parent == tmp_path / "reports" / "quality"
    for name in ("quality.md", "histogram.png", "boxplots.png", "outliers.png", "scores.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = markdown.read_text()
    for needle in ("histogram.png", "boxplots.png", "outliers.png", "Kruskal–Wallis",
                   "Mann–Whitney", "Holm", "rank-biserial r", "What brisque_filter=on removes"):
        assert needle in text

    scores = pd.read_csv(out / "scores.csv")
    groups = [scores.loc[scores["cls"] == c, "score"].dropna() for c in CLASSES]
    h, p = stats.kruskal(*[g for g in groups if len(g)])
    assert f"H = {h:.3f}" in text

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["quality-test"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    data = prepare(data_config(cfg))
    assert run.info.status == "FINISHED"
    assert run.data.tags[schema.KIND] == "quality"
    assert run.data.tags[schema.FINGERPRINT] == data.fingerprint
    assert run.data.metrics["kruskal_h"] == pytest.approx(h)
    assert run.data.metrics["kruskal_p"] == pytest.approx(p)
    assert run.data.params["analysis_size"] == "96"
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "quality")}
    assert {f"quality/{n}" for n in ("quality.md", "histogram.png", "boxplots.png",
                                     "outliers.png", "scores.csv")} <= logged

    # An exception inside the run ends it as FAILED (scores come from the cache now).
    monkeypatch.setattr(scores_module, "brisque", _no_piq)
    monkeypatch.setattr(Recorder, "folder", _no_piq)
    with pytest.raises(AssertionError):
        run_report(cfg)
    statuses = {r.info.status for r in mlflow.search_runs(experiment_names=["quality-test"],
                                                          output_format="list")}
    assert statuses == {"FINISHED", "FAILED"}


# --- the real fixture ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixture_scores(fixture_root, brisque_weights, tmp_path_factory):
    cache = tmp_path_factory.mktemp("quality-cache")
    # One process: on 2 busy cores, spawning workers costs more than it saves (see the pool test).
    data = prepare(DataConfig(root=fixture_root, cache_dir=cache, workers=1,
                              preprocess=PreprocessOptions(mode="raw", image_size=32)))
    return data, brisque_scores(data, QualityConfig(), cache, workers=1)


# The module fixture scores the fixture once per worker (12 s): its tests share one.
SCORED_ONCE = pytest.mark.xdist_group("quality-fixture-scores")


@pytest.mark.slow
@SCORED_ONCE
def test_real_fixture_scores_are_finite(fixture_scores):
    data, scores = fixture_scores
    assert len(scores) == len(data.table) >= 190
    assert (scores["status"] == "ok").all()
    assert np.isfinite(scores["score"]).all()


@pytest.mark.slow  # over 2.5 s: not in the inner loop
@SCORED_ONCE
def test_jpeg_recompression_scores_worse(fixture_scores, tmp_path):
    data, scores = fixture_scores
    source = Path(data.table["image_path"][0])
    with Image.open(source) as im:
        im.convert("L").save(tmp_path / "recompressed.jpg", quality=10)
    worse = score_files([tmp_path / "recompressed.jpg"], QualityConfig(), workers=1)
    assert worse["status"][0] == "ok"
    assert worse["score"][0] > scores["score"][0] + 10
