"""The crossed-design simulator: its population cell means are the ones asked for."""

from __future__ import annotations

import numpy as np
import pytest

from xray_ablate.stats.simulate import crossed_population, crossed_scores


def test_cell_means_and_seed_sds_are_the_ones_asked_for():
    rng = np.random.default_rng(3)
    means, sds = {"a": 0.8, "b": 0.55}, {"a": 0.01, "b": 0.08}
    hits = {c: [] for c in means}
    for _ in range(40):  # new test sets: the cell mean is over images as well as seeds
        pop = crossed_population(means, 500, sds, 2.0, rng)
        for c in means:
            hits[c].append(pop.draw(c, 0, 50, rng).to_numpy())
    for c, runs in hits.items():
        y = np.stack(runs)
        assert y.mean() == pytest.approx(means[c], abs=0.006)
        # a seed's accuracy sd over seeds, less the Bernoulli part of 500 images
        run_var = y.mean(-1).var(axis=1, ddof=1).mean()
        bernoulli = (y.mean(1) * (1 - y.mean(1))).mean() / 500
        assert np.sqrt(run_var - bernoulli) == pytest.approx(sds[c], rel=0.15)


def test_later_seeds_share_the_test_images_and_continue_the_numbering():
    rng = np.random.default_rng(0)
    pop = crossed_population({"a": 0.7}, 30, 0.02, 2.0, rng)
    first, more = pop.draw("a", 0, 3, rng), pop.draw("a", 3, 2, rng)
    assert list(first.index) == [0, 1, 2] and list(more.index) == [3, 4]
    assert first.columns.equals(more.columns)
    # shared difficulty: images hard for the first seeds are hard for the later ones
    together = np.vstack([first, more, pop.draw("a", 5, 200, rng)])
    assert np.corrcoef(together[:100].mean(0), together[100:].mean(0))[0, 1] > 0.8
    scores = crossed_scores({"x": 0.9, "y": 0.5}, {"x": 2, "y": 4}, 25, 0.03, 1.0, rng, first_seed=7)
    assert {c: f.shape for c, f in scores.items()} == {"x": (2, 25), "y": (4, 25)}
    assert list(scores["y"].index) == [7, 8, 9, 10]
    assert set(np.unique(scores["y"])) <= {0.0, 1.0}
