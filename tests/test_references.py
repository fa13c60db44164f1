"""references/: Wilson intervals (hand formula, simulated coverage), trivial baselines and the
attribute rule by hand, subgroup accuracy, the probe sentence, the disk cache, and the figures on
the real fixture (masked and raw) recomputed here with pandas and scikit-learn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_data_helpers import config

from xray_ablate.data.prepare import prepare
from xray_ablate.data.summary import cramers_v
from xray_ablate.errors import UserError
from xray_ablate.references import (
    Probe,
    Proportion,
    accuracy_gap,
    compute_references,
    probe_sentence,
    subgroup_scores,
)
from xray_ablate.references import baselines as baselines_module
from xray_ablate.references.baselines import attribute_rule, majority_class, source_probe
from xray_ablate.references.pixels import C_GRID, downscale

# --- intervals -----------------------------------------------------------------------------


def test_cramers_v_known_tables():
    assert cramers_v(np.array([[10, 0], [0, 7]])) == pytest.approx(1.0)
    assert cramers_v(np.outer([1, 2, 3], [4, 5])) == pytest.approx(0.0)
    assert cramers_v(np.array([[5, 5], [0, 0]])) is None  # one class: no association defined


# --- baselines by hand ---------------------------------------------------------------------

def test_majority_and_attribute_rule_by_hand():
    cls_train = np.array(["viral", "viral", "covid", "covid", "covid", "healthy", "bacterial", "bacterial"])
    site_train = np.array(["a", "a", "b", "b", "b", "a", "c", "c"])
    cls_test = np.array(["viral", "covid", "covid", "bacterial", "healthy"])
    site_test = np.array(["a", "b", "a", "new", "c"])
    majority = majority_class(cls_train, cls_test)
    assert majority.detail["predicts"] == "covid" and majority.test == Proportion(2, 5)
    rule = attribute_rule("site", cls_train, site_train, cls_test, site_test)
    # a -> viral (2 of 3), b -> covid, c -> bacterial, an unseen level -> the majority class (covid)
    assert rule.detail["rule"] == {"a": "viral", "b": "covid", "c": "bacterial"}
    assert rule.test == Proportion(2, 5)  # hits: viral@a, covid@b


def test_ties_go_to_the_class_listed_first():
    # bacterial and healthy both twice: bacterial comes first in CLASSES
    cls = np.array(["healthy", "bacterial", "healthy", "bacterial"])
    assert majority_class(cls, cls).detail["predicts"] == "bacterial"


def test_source_probe_finds_an_attribute_written_into_the_pixels():
    rng = np.random.default_rng(1)
    x, levels = {}, {}
    for split, n in (("train", 80), ("val", 30), ("test", 40)):
        site = rng.choice(["kermany", "cohen"], size=n, p=[0.7, 0.3])
        pixels = rng.normal(size=(n, 64))
        pixels[:, :8] += np.where(site == "cohen", 2.0, -2.0)[:, None]  # the "hospital marker"
        x[split], levels[split] = pixels, site
    probe = source_probe("source", x, levels, "raw")
    assert probe.test.rate >= 0.95 and probe.detail["majority_level"] == "kermany"
    assert type(probe.detail["majority_level"]) is str
    assert probe.majority == Proportion(int(np.sum(levels["test"] == "kermany")), 40)
    assert source_probe("source", x, {**levels, "train": np.array(["a"] * 80)}) is None


def test_probe_sentence():
    raw = Probe("source", Proportion(97, 100), Proportion(63, 100), "raw")
    masked = Probe("source", Proportion(86, 100), Proportion(63, 100), "masked")
    assert probe_sentence([raw, masked]) == \
        "the raw images reveal source at 97 % (majority 63 %); the masked lungs at 86 %"
    other = Probe("source", Proportion(5, 10), Proportion(6, 10), "masked")
    assert probe_sentence([raw, other]).endswith("the masked lungs at 50 % (majority 60 %)")
    assert probe_sentence([]) == ""


# --- subgroups -----------------------------------------------------------------------------

def test_subgroup_scores_by_hand():
    labels = np.array([0, 1, 2, 3] * 5 + [0, 0])
    probs = np.eye(4)[labels].copy()
    probs[[0, 1, 20]] = np.eye(4)[[3, 3, 1]]  # two wrong in "kermany", one in "cohen"
    levels = np.array(["kermany"] * 20 + ["cohen"] * 2)
    scores = {s.level: s for s in subgroup_scores(labels, probs, levels)}
    assert list(scores) == ["cohen", "kermany"]
    assert scores["kermany"].accuracy == Proportion(18, 20) and not scores["kermany"].small
    assert scores["cohen"].accuracy == Proportion(1, 2) and scores["cohen"].small
    assert scores["cohen"].as_dict()["small"] is True
    assert accuracy_gap(list(scores.values())) is None  # only one level with >= 10 images
    more = np.concatenate([levels[:10], np.array(["x"] * 12)])
    gap = accuracy_gap(subgroup_scores(labels, probs, more))
    assert gap == pytest.approx(11 / 12 - 8 / 10)  # kermany: 2 errors of 10; "x": the third of 12
    with pytest.raises(ValueError, match="22 labels, 22 probability rows, 3 levels"):
        subgroup_scores(labels, probs, levels[:3])


# --- caching on synthetic data -------------------------------------------------------------

def test_references_are_cached_and_keyed_by_attributes(synthetic_root, tmp_path, monkeypatch):
    plain = prepare(config(synthetic_root, tmp_path / "c", "raw", 16))
    csv = tmp_path / "meta.csv"
    ids = sorted(plain.table["image_id"])
    pd.DataFrame({"name": ids, "site": ["A", "B"] * (len(ids) // 2)}).to_csv(csv, index=False)
    data = prepare(dataclasses.replace(config(synthetic_root, tmp_path / "c", "raw", 16), metadata=csv))
    first = compute_references(data, ["site"], tmp_path / "c", "raw")
    assert first.fitted_now and [r.name for r in first.rows] == ["majority", "pixel_logreg", "attribute_rule"]
    assert [p.variant for p in first.probes] == ["raw"]

    def refuse(*args, **kwargs):
        raise AssertionError("refitted although cached")

    monkeypatch.setattr(baselines_module, "fit_pixel_model", refuse)
    second = compute_references(data, ["site"], tmp_path / "c", "raw")
    assert not second.fitted_now and second.as_dict() == first.as_dict()
    with pytest.raises(AssertionError, match="refitted"):  # other attributes: another key
        compute_references(data, [], tmp_path / "c", "raw")
    with pytest.raises(UserError, match="eval.subgroups: attribute 'View' is not usable"):
        compute_references(data, ["View"], tmp_path / "c", "raw")


# --- the real fixture ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fx_refs(fixture_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fx-refs")
    out = {}
    for mode in ("raw", "masked"):
        cfg = dataclasses.replace(config(fixture_root, cache, mode, 32), metadata=fixture_root / "manifest.csv")
        data = prepare(cfg)
        out[mode] = (data, compute_references(data, ["source", "View"], cache, mode))
    return out


def _split_column(data, column: str) -> dict[str, np.ndarray]:
    return {s: data.table[column].to_numpy()[data.split_indices(s)] for s in ("train", "val", "test")}


def _pixel_accuracy_by_hand(data, target: dict[str, np.ndarray]) -> tuple[float, float]:
    x = {s: data.images[data.split_indices(s)].reshape(len(target[s]), -1) / 255.0 for s in target}
    best = (-1.0, None)
    for c in C_GRID:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x["train"], target["train"])
        val = np.mean(model.predict(x["val"]) == target["val"])
        if val > best[0]:
            best = (val, model)
    return float(np.mean(best[1].predict(x["test"]) == target["test"])), best[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raw", "masked"])
def test_fixture_references_recomputed(fx_refs, mode):
    data, refs = fx_refs[mode]
    rows = {(r.name, r.attribute): r for r in refs.rows}
    table = data.table
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    # Majority class: the class most frequent in train, scored on test.
    counts = train["cls"].value_counts()
    top = counts.index[counts == counts.max()]
    assert rows[("majority", None)].detail["predicts"] in set(top)
    assert rows[("majority", None)].test == Proportion(int((test["cls"] == rows[("majority", None)]
                                                            .detail["predicts"]).sum()), len(test))
    # Attribute rule for source: per level the training majority class.
    rule = train.groupby("source")["cls"].agg(lambda s: s.value_counts().index[0])
    predicted = test["source"].map(rule)
    assert rows[("attribute_rule", "source")].test.k == int((predicted == test["cls"]).sum())
    assert rule["cohen+v7json"] == "covid"  # all COVID-19 images come from one source
    # The pixel model and the source probe, refitted here on the 32-px images.
    cls, source = _split_column(data, "cls"), _split_column(data, "source")
    pixel = rows[("pixel_logreg", None)]
    assert pixel.test.rate == pytest.approx(_pixel_accuracy_by_hand(data, cls)[0])
    probe = {p.attribute: p for p in refs.probes}["source"]
    assert probe.test.rate == pytest.approx(_pixel_accuracy_by_hand(data, source)[0])
    assert probe.majority.rate == pytest.approx(np.mean(source["test"] == "kermany"))
    # Plausible: the trivial rules beat chance and the images reveal their source.
    assert rows[("majority", None)].test.rate < 0.35 < rows[("attribute_rule", "source")].test.rate
    assert probe.test.rate > probe.majority.rate + 0.05
    lo, hi = pixel.test.interval
    assert lo < pixel.test.rate < hi


@pytest.mark.slow  # over 2.5 s: not in the inner loop
def test_fixture_probe_sentence_and_masking(fx_refs):
    raw = {p.attribute: p for p in fx_refs["raw"][1].probes}
    masked = {p.attribute: p for p in fx_refs["masked"][1].probes}
    sentence = probe_sentence([raw["source"], masked["source"]])
    assert sentence.startswith(f"the raw images reveal source at {100 * raw['source'].test.rate:.0f} % (majority ")
    assert sentence.endswith(f"the masked lungs at {100 * masked['source'].test.rate:.0f} %")
    # Masked and raw share the split, so the rules that ignore pixels agree.
    for name in ("majority", "attribute_rule"):
        assert [r.test for r in fx_refs["raw"][1].rows if r.name == name] == \
            [r.test for r in fx_refs["masked"][1].rows if r.name == name]
    assert downscale(fx_refs["raw"][0].images[:2]).shape == (2, 32 * 32)


def test_pixel_models_fit_on_one_blas_thread(monkeypatch):
    """Whatever the cores: BLAS's threads made these small fits several times slower, and the sums
    they split depended on the machine."""
    from threadpoolctl import threadpool_info

    from xray_ablate.references import pixels

    seen = []
    fit = LogisticRegression.fit

    def record(self, *args, **kwargs):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", record)
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 16)), np.arange(40) % 2
    pixels.fit_pixel_model(x[:30], y[:30], x[30:], y[30:])
    assert seen == [{1}] * len(C_GRID)


def test_pixels_downscale_by_area_mean():
    images = np.zeros((1, 4, 4), np.uint8)
    images[0, :2, :2] = 255
    assert downscale(images, 2).tolist() == [[1.0, 0.0, 0.0, 0.0]]
