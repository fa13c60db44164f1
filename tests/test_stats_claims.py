"""The claims of an ablation and their verdicts over the looks of a sequential design."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xray_ablate.stats.claims import ablation_claims, verdict_line, verdicts
from xray_ablate.stats.simulate import crossed_population
from xray_ablate.stats.verdicts import BETTER, UNRESOLVED, WORSE, SequentialDesign, Verdict, cells_to_extend

LEVELS = pd.DataFrame({"dataset": ["masked", "raw", "masked", "raw"], "class_weights": ["off", "off", "on", "on"]},
                      index=["mo", "ro", "mn", "rn"])


def test_a_crossed_two_by_two_makes_three_deltas_and_two_main_effects():
    claims = {c.name: dict(c.weights) for c in ablation_claims(LEVELS, "mo")}
    assert claims == {
        "dataset=raw − baseline": {"ro": 1.0, "mo": -1.0},
        "class_weights=on − baseline": {"mn": 1.0, "mo": -1.0},
        "dataset=raw, class_weights=on − baseline": {"rn": 1.0, "mo": -1.0},
        "dataset: raw − masked (main effect)": {"ro": 0.5, "rn": 0.5, "mo": -0.5, "mn": -0.5},
        "class_weights: on − off (main effect)": {"mn": 0.5, "rn": 0.5, "mo": -0.5, "ro": -0.5},
    }


def test_factors_not_crossed_make_deltas_only():
    one_at_a_time = LEVELS.drop(index="rn")
    assert [c.name for c in ablation_claims(one_at_a_time, "mo")] == [
        "dataset=raw − baseline", "class_weights=on − baseline"]


def _cells(means: dict[str, float], seeds: int, seed_sd: float = 0.01, images: int = 400, rng_seed: int = 0):
    rng = np.random.default_rng(rng_seed)
    population = crossed_population(means, images, seed_sd, 1.0, rng)
    return {c: population.draw(c, 0, seeds, rng) for c in means}


def test_a_claim_keeps_the_verdict_of_the_first_look_that_resolves_it():
    """A large effect is resolved at the first look; its seeds are the first look's, not all 8."""
    cells = _cells({"mo": 0.8, "ro": 0.6, "mn": 0.8, "rn": 0.6}, seeds=8)
    design = SequentialDesign(delta=0.02, alpha=0.05, looks=(3, 5, 8))
    judged = {v.claim: v for v in verdicts(ablation_claims(LEVELS, "mo"), cells, design)}
    raw = judged["dataset=raw − baseline"]
    assert raw.verdict == WORSE and raw.seeds == 3 and raw.look == 0 and raw.high < 0
    assert "worse: " in verdict_line(raw) and "3 seeds" in verdict_line(raw)
    # lower is better (a loss): the same difference is an improvement
    flipped = {v.claim: v for v in verdicts(ablation_claims(LEVELS, "mo"), cells, design, higher_is_better=False)}
    assert flipped["dataset=raw − baseline"].verdict == BETTER


def _runs(correct_per_seed: list[int], images: int = 100) -> pd.DataFrame:
    """Seed s gets its first correct_per_seed[s] images right."""
    return pd.DataFrame([[1.0] * k + [0.0] * (images - k) for k in correct_per_seed])


def test_an_unresolved_claim_is_judged_at_the_last_look_its_seeds_reach():
    """Seeds that swing by ±10 pp around the baseline: neither a difference nor equivalence at 3
    or 5 seeds; the verdict is the 5-seed look's, with its interval around 0."""
    cells = {"mo": _runs([70] * 5), "mn": _runs([80, 60, 75, 65, 70])}
    design = SequentialDesign(delta=0.02, alpha=0.05, looks=(3, 5, 8))
    (cw,) = verdicts(ablation_claims(LEVELS.loc[["mo", "mn"], ["class_weights"]], "mo"), cells, design)
    assert cw.verdict == UNRESOLVED and cw.look == 1 and cw.seeds == 5
    assert cw.low < 0 < cw.high and cw.estimate == pytest.approx(0.0)


@pytest.mark.parametrize("seeds", [2, 3])
def test_fewer_seeds_than_the_first_look_are_judged_at_the_first_look(seeds):
    cells = _cells({"mo": 0.8, "ro": 0.5}, seeds=seeds)
    design = SequentialDesign(delta=0.02, alpha=0.05, looks=(3, 5))
    (v,) = verdicts(ablation_claims(LEVELS.loc[["mo", "ro"], ["dataset"]], "mo"), cells, design)
    assert v.look == 0 and v.seeds == seeds


def test_configurations_that_share_their_factor_levels_get_claims_of_their_own():
    """A sweep of a setting that is no factor (trainer.lr=1e-3,2e-3,3e-3): every configuration has
    the baseline's levels. Both Δ claims were "same levels − baseline", so a verdict stood for the
    other claim in every lookup by name (the adaptive sweep's cells to extend, the run table's
    verdict column); now each carries its key, as the run table's label does."""
    levels = pd.DataFrame(index=["ce0f64eba6bf", "5dbf8eefa86a", "6ae2b2bd57b1"])
    claims = ablation_claims(levels, "ce0f64eba6bf")
    assert [c.name for c in claims] == ["baseline levels [5dbf8eef] − baseline",
                                        "baseline levels [6ae2b2bd] − baseline"]
    judged = {c.name: Verdict(claim=c.name, estimate=0.0, low=-0.1, high=0.1, confidence=0.95, verdict=v,
                              seeds=3, look=0, more_seeds=m)
              for c, v, m in zip(claims, (UNRESOLVED, BETTER), (2.0, 0.0), strict=True)}
    assert cells_to_extend(claims, judged) == {"ce0f64eba6bf", "5dbf8eefa86a"}
    # a 2 x 2 with one cell run twice (another setting): Δ claims by key, no main effects of a
    # design whose cell is ambiguous
    twice = pd.concat([LEVELS, LEVELS.loc[["rn"]].rename(index={"rn": "rn2"})])
    names = [c.name for c in ablation_claims(twice, "mo")]
    assert names == ["dataset=raw − baseline", "class_weights=on − baseline",
                     "dataset=raw, class_weights=on [rn] − baseline", "dataset=raw, class_weights=on [rn2] − baseline"]


def test_what_rounds_to_zero_is_shown_without_a_minus():
    """An estimate of -0.04 pp printed as '-0.0 pp' (a sign the shown number has not got), in the
    verdict line, the tables' numbers and intervals."""
    from xray_ablate.report.render.tables import fmt, fmt_ci, fmt_pm

    v = Verdict("a − b", -0.0004, -0.0004, 0.05, 0.95, UNRESOLVED, 5, 0, float("nan"))
    assert verdict_line(v).startswith("unresolved: +0.0 pp [+0.0, +5.0] (95.0 % CI")
    shown = (fmt(-0.04), fmt_pm(-0.04, 0.01), fmt_ci(-0.04, 3.0), fmt(-0.06))
    assert shown == ("0.0", "0.0 ± 0.0", "[0.0, 3.0]", "-0.1")
