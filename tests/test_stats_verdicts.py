"""Verdicts under repeated looks, checked against known truth: simulated designs and hand examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from xray_ablate.stats import mixed
from xray_ablate.stats import verdicts as v
from xray_ablate.stats.intervals import total_contrast
from xray_ablate.stats.simulate import crossed_population

DELTA = 0.02


def test_boundaries_spend_alpha_on_a_brownian_motion():
    """The nominal levels of 4 looks at fractions .3, .5, .8, 1: a simulated Brownian motion
    crosses the first time at look k with probability spent(t_k) - spent(t_(k-1))."""
    fractions, alpha = (0.3, 0.5, 0.8, 1.0), 0.025
    levels = v.nominal_levels(fractions, alpha)
    rng = np.random.default_rng(0)
    steps = np.diff((0.0, *fractions))
    b = np.cumsum(rng.standard_normal((400_000, 4)) * np.sqrt(steps), axis=1)
    crossed = b / np.sqrt(fractions) >= v.stats.norm.isf(levels)
    first = np.where(crossed.any(1), crossed.argmax(1), -1)
    spent = np.diff([0.0] + [v.pocock_spending(t, alpha) for t in fractions])
    assert [np.mean(first == k) for k in range(4)] == pytest.approx(spent, abs=0.0006)
    assert np.mean(first >= 0) == pytest.approx(alpha, abs=0.001)
    assert levels[0] == pytest.approx(v.pocock_spending(0.3, alpha))
    one = v.SequentialDesign(DELTA, (10,))  # one look: the usual levels
    assert (one.difference_confidence(0), one.equivalence_confidence(0)) == pytest.approx((0.95, 0.90))


def test_planned_looks_grow_by_a_quarter_and_end_at_the_budget():
    assert v.planned_looks(3, 10) == (3, 4, 5, 7, 10)  # 9 -> 10 is one seed: merged into the last look
    assert v.planned_looks(3, 8) == (3, 4, 5, 8)
    assert v.planned_looks(3, 9) == (3, 4, 5, 7, 9)
    assert v.planned_looks(3, 5) == (3, 5)  # the demo's: 4 -> 5 merged
    assert v.planned_looks(5, 20) == (5, 7, 9, 12, 15, 20)
    assert v.planned_looks(3, 3) == (3,)
    with pytest.raises(ValueError, match="looks must increase"):
        v.SequentialDesign(DELTA, (5, 3))


def _frames(a_rows, b_rows, images=100):
    """Cells a and b: seed s correct on the first a_rows[s] (b_rows[s]) images."""
    def frame(rows):
        return pd.DataFrame([(np.arange(images) < r).astype(float) for r in rows])
    return {"a": frame(a_rows), "b": frame(b_rows)}


CLAIM = v.Claim("a - b", {"a": 1.0, "b": -1.0})
ONE_LOOK = v.SequentialDesign(DELTA, (4,))


def test_hand_examples_of_each_verdict():
    better = v.judge(CLAIM, _frames([90, 91, 92, 93], [80, 81, 82, 83]), ONE_LOOK, 0)
    assert (better.verdict, better.estimate, better.seeds, better.more_seeds) == (
        v.BETTER, pytest.approx(0.10), 4, 0.0)
    assert better.low > 0 and not better.within_delta and better.confidence == pytest.approx(0.95)
    worse = v.judge(CLAIM, _frames([80, 81, 82, 83], [90, 91, 92, 93]), ONE_LOOK, 0)
    assert (worse.verdict, worse.estimate) == (v.WORSE, pytest.approx(-0.10))
    # Run differences 0, +1, -1, 0 pp: se 0.4 pp, the 90 % TOST interval inside +-2 pp.
    same = v.judge(CLAIM, _frames([80, 82, 80, 80], [80, 81, 81, 80]), ONE_LOOK, 0)
    assert (same.verdict, same.estimate, same.confidence) == (v.EQUIVALENT, 0.0, pytest.approx(0.90))
    assert -DELTA < same.low < same.high < DELTA and same.within_delta
    # Differences +5, -3, +4, -2 pp: neither; more seeds would tell.
    noisy = v.judge(CLAIM, _frames([85, 80, 84, 80], [80, 83, 80, 82]), ONE_LOOK, 0)
    assert noisy.verdict == v.UNRESOLVED and noisy.low < 0 < noisy.high
    assert 1 <= noisy.more_seeds < math.inf
    # A precise 1 pp effect (10, 11, 9, 10 of 1,000 images): both hold, the difference wins and
    # within_delta says the rest.
    small = v.judge(CLAIM, _frames([810, 811, 809, 810], [800] * 4, images=1000), ONE_LOOK, 0)
    assert (small.verdict, small.within_delta) == (v.BETTER, True)
    # One image ahead on every seed, another image each time: the seed contrasts agree by the
    # counts, and the seed term is the residual's share, not 0 (it was: a zero-width interval and
    # "better" on 4 discordant images, whose sign test gives p 0.125).
    counts = v.judge(CLAIM, _frames([81, 82, 83, 84], [80, 81, 82, 83]), ONE_LOOK, 0)
    assert counts.verdict == v.UNRESOLVED and counts.low < 0 < counts.high
    # The interval is total_contrast's at the look's level.
    ref = total_contrast(_frames([85, 80, 84, 80], [80, 83, 80, 82]), CLAIM.weights, 0.95)
    assert (noisy.low, noisy.high) == pytest.approx((ref.low, ref.high))


def test_more_seeds_is_infinite_when_the_test_images_alone_are_too_few():
    """10 images, a right on images 0-5 and b on 4-9 with every seed: Δ = 0 with no seed spread,
    but the images alone give it an se of 30 pp, which no number of seeds shrinks."""
    a = pd.DataFrame([[1.0] * 6 + [0.0] * 4] * 4)
    b = pd.DataFrame([[0.0] * 4 + [1.0] * 6] * 4)
    verdict = v.judge(CLAIM, {"a": a, "b": b}, ONE_LOOK, 0)
    assert (verdict.verdict, verdict.estimate, verdict.more_seeds) == (v.UNRESOLVED, 0.0, math.inf)
    lone = v.judge(CLAIM, {"a": a.iloc[:1], "b": b.iloc[:1]}, ONE_LOOK, 0)
    assert lone.verdict == v.UNRESOLVED and math.isnan(lone.more_seeds)  # one seed: unknown


def _verdict(name, verdict, more):
    return v.Verdict(name, 0.0, -1.0, 1.0, 0.95, verdict, 3, 0, more)


def test_cells_to_extend_are_those_of_unresolved_claims_seeds_can_help():
    claims = [v.Claim("A", {"a1 | b0": 0.5, "a1 | b1": 0.5, "a0 | b0": -0.5, "a0 | b1": -0.5}),
              v.Claim("x", {"x": 1, "a0 | b0": -1}), v.Claim("y", {"y": 1, "z": 0, "w": -1}),
              v.Claim("img", {"i": 1, "w": -1}), v.Claim("new", {"n": 1, "w": -1})]
    verdicts = {"A": _verdict("A", v.BETTER, 0.0), "x": _verdict("x", v.EQUIVALENT, 0.0),
                "y": _verdict("y", v.UNRESOLVED, 4.0), "img": _verdict("img", v.UNRESOLVED, math.inf),
                "new": _verdict("new", v.UNRESOLVED, math.nan)}
    assert v.cells_to_extend(claims, verdicts) == {"y", "w", "n"}  # z has weight 0
    assert v.cells_to_extend(claims, verdicts, ["y", "w"]) == {"y", "w"}
    assert v.cells_to_extend(claims[:2], verdicts) == set()
    # with 3 seeds left in the budget the 4 that y needs cannot be run: only the unknown claim grows
    assert v.cells_to_extend(claims, verdicts, seeds_left=3) == {"n", "w"}
    assert v.cells_to_extend(claims, verdicts, seeds_left=4) == {"y", "w", "n"}


def test_equal_seed_contrasts_by_the_counts_leave_the_interval_its_width():
    """Two seeds, 200 images, a 4 images ahead of b on both (12 right and 8 wrong that b had the
    other way, other images on each seed: per-seed McNemar p 0.50): the seed contrasts agree
    exactly, and the seed term was 0, the image term (which leaves the residual to the seed term)
    floored at 0, so the verdict interval had zero width and said "better", and so did the pooled
    fit. Now each interval keeps the residual's share, and the claim is unresolved."""
    base = (np.random.default_rng(0).random(200) < 0.8).astype(float)
    wrong, right = np.flatnonzero(base == 0), np.flatnonzero(base == 1)
    seeds = []
    for s in range(2):
        a = base.copy()
        a[wrong[12 * s:12 * s + 12]], a[right[8 * s:8 * s + 8]] = 1.0, 0.0
        seeds.append(a)
    cells = {"a": pd.DataFrame(seeds), "b": pd.DataFrame([base, base])}
    verdict = v.judge(CLAIM, cells, v.SequentialDesign(DELTA, (2,)), 0)
    assert verdict.estimate == pytest.approx(0.02) and verdict.verdict == v.UNRESOLVED
    assert verdict.low < 0 < verdict.high
    pooled = mixed.pooled_intervals(cells, [CLAIM]).iloc[0]
    assert pooled["low"] < 0.02 < pooled["high"] and pooled["se"] > 0


def test_run_adaptive_adds_seeds_only_where_a_claim_is_unresolved():
    rng = np.random.default_rng(1)
    pop = crossed_population({"base": 0.7, "big": 0.95, "same": 0.7}, 150, 0.03, 1.5, rng)
    claims = [v.Claim("big", {"big": 1, "base": -1}), v.Claim("same", {"same": 1, "base": -1})]
    design = v.SequentialDesign(DELTA, v.planned_looks(3, 8))
    result = v.run_adaptive(claims, lambda c, first, n: pop.draw(c, first, n, rng), design)
    assert result.verdicts["big"] == result.rounds[0]["big"]  # resolved at the first look, kept
    assert (result.verdicts["big"].verdict, result.verdicts["big"].look) == (v.BETTER, 0)
    assert result.seeds == {"base": 8, "big": 3, "same": 8}
    assert result.runs == 19 and len(result.rounds) == 4  # looks 3, 4, 5, 8
    assert result.verdicts["same"].look == 3 and result.verdicts["same"].seeds == 8


def _rates(effect, seed_sd, images, reps, rng, spend_budget=False):
    """Verdict shares of the adaptive Δ a - b (3 -> 10 seeds, 5 looks) at a true effect of
    +-effect (alternating), with the mean runs per replicate."""
    design = v.SequentialDesign(DELTA, v.planned_looks(3, 10))
    counts, runs = dict.fromkeys((v.BETTER, v.WORSE, v.EQUIVALENT, v.UNRESOLVED), 0), 0
    for r in range(reps):
        e = effect if r % 2 else -effect
        pop = crossed_population({"a": 0.8 + e / 2, "b": 0.8 - e / 2}, images, seed_sd, 2.0, rng)
        result = v.run_adaptive([CLAIM], lambda c, first, n, pop=pop: pop.draw(c, first, n, rng),
                                  design, spend_budget)
        counts[result.verdicts[CLAIM.name].verdict] += 1
        runs += result.runs
    return {k: n / reps for k, n in counts.items()}, runs / reps


@pytest.mark.slow
def test_type_one_error_at_every_look(capsys):
    """No true effect, seed sd 3 pp, 100 images, every unresolved claim taken to all 5 looks (the
    worst case): a difference declared at any look in at most 6 % of 5,000 replicates (se 0.3 pp;
    at 2,000, se 0.5 pp, the first 2,000 of this stream gave 6.35 % where the 5,000 give 5.2 %:
    a change that alters one replicate's path re-draws the rest, so 2,000 failed by chance)."""
    rates, runs = _rates(0.0, 0.03, 100, 5000, np.random.default_rng(25), spend_budget=True)
    with capsys.disabled():
        print(f"\ntrue Δ = 0, every look, 5,000 replicates: {rates}, {runs:.1f} runs each")
    assert rates[v.BETTER] + rates[v.WORSE] <= 0.06 and runs > 14  # of 20 (2 cells x 10): most saw every look


@pytest.mark.slow
def test_type_one_error_in_the_demos_case(capsys):
    """No true effect, seed sd 1 pp in one cell and 8 pp (left-skewed: seeds that fail) in the
    other, the procedure as the sweep runs it: at most 6 % of 2,000 replicates."""
    rates, runs = _rates(0.0, {"a": 0.01, "b": 0.08}, 100, 2000, np.random.default_rng(24))
    with capsys.disabled():
        print(f"\ntrue Δ = 0, seed sd 1 and 8 pp, 2,000 replicates: {rates}, {runs:.1f} runs each")
    assert rates[v.BETTER] + rates[v.WORSE] <= 0.06


@pytest.mark.slow
def test_false_equivalence_at_a_true_effect_of_delta(capsys):
    """True Δ = +-δ exactly, in a precise regime (seed sd 0.5 pp, 1,000 test images) where
    equivalence is within reach: equivalence declared in at most 6 % of 2,000 replicates."""
    rates, runs = _rates(DELTA, 0.005, 1000, 2000, np.random.default_rng(26))
    with capsys.disabled():
        print(f"\ntrue Δ = +-δ, 2,000 replicates: {rates}, {runs:.1f} runs each")
    assert rates[v.EQUIVALENT] <= 0.06


def test_verdicts_bench_smoke():
    """The bench's rows at 8 replicates: per scenario, the runs ratio is the adaptive runs over 40,
    between the first look alone (12 runs) and all 10 seeds, met only when the adaptive design also
    reaches the true verdicts as often; agreement is a share."""
    from xray_ablate.bench import verdicts as bench

    rows = bench.run(smoke=True)
    assert [r.what.rsplit(", ", 2)[-2:] for r in rows[::2]] == [
        ["180 test images", "seed sd 3 pp"], ["1600 test images", "seed sd 3 pp"], ["1600 test images", "seed sd 1 pp"]]
    for ratio, agree in zip(rows[::2], rows[1::2], strict=True):
        assert 12 / 40 <= ratio.value <= 1 and f"{ratio.value * 40:.1f} runs (se " in ratio.notes
        assert ratio.met == (ratio.value <= 0.6 and "(as often, 2 se)" in ratio.notes)
        assert 0 <= agree.value <= 100 and agree.unit == "% of replicates"
        assert "A: adaptive better" in agree.notes  # the 8 pp effect is found in every replicate


def test_as_often_allows_two_standard_errors():
    from xray_ablate.bench.verdicts import as_often

    # 400 replicates at 0.90 and 0.95: se of the difference 0.0185, 2 se 0.037 < 0.05
    assert not as_often(0.90, 0.95, 400) and as_often(0.92, 0.95, 400) and as_often(0.99, 0.95, 400)
