"""Runs to the verdicts: the adaptive sweep (3 -> 10 seeds) vs a fixed 10 seeds, simulated 2 x 2."""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np

from xray_ablate.bench.rows import Row
from xray_ablate.stats import verdicts as v
from xray_ablate.stats.intervals import cell_label, contrast_weights
from xray_ablate.stats.simulate import crossed_population

COMMAND = "python -m xray_ablate.bench verdicts"
# 80 % accuracy, most images nearly always right or wrong (difficulty sd 2 on the probit scale);
# A changes accuracy by 8 pp, B not at all. Scenarios (test images, seed sd):
# - demo-like, 180 images and a seed sd of 3 pp, and the study's test set (about 1,600 of its
#   6,504 images at 25 %) at 3 pp: there 10 seeds rarely show B equivalent within δ (the budget
#   is too small for that claim, for both designs);
# - the study's test set at the seed sd of the demo's masked cells (1 pp): a plan whose 10 seeds
#   resolve both claims (B equivalent in about 95 % of replicates), where "the same verdicts"
#   means something.
SCENARIOS = ((180, 0.03), (1600, 0.03), (1600, 0.01))
BASE, IMAGE_SD, EFFECT, DELTA = 0.80, 2.0, 0.08, 0.02
FIRST, MOST = 3, 10
REPLICATES, SMOKE_REPLICATES = 1000, 8  # 1,000: the runs ratio to about +-0.004 (1 se)
FACTORS, LEVELS = ("A", "B"), {"A": ("a0", "a1"), "B": ("b0", "b1")}
CLAIMS = [v.Claim(f, contrast_weights(FACTORS, LEVELS, {f: (LEVELS[f][1], LEVELS[f][0])})) for f in FACTORS]
TRUE_VERDICTS = {"A": v.BETTER, "B": v.EQUIVALENT}
MEANS = {cell_label((a, b)): BASE + (EFFECT / 2 if a == "a1" else -EFFECT / 2)
         for a in LEVELS["A"] for b in LEVELS["B"]}


def compare(replicates: int, images: int, seed_sd: float, rng: np.random.Generator) -> dict:
    """Each replicate: one test set, 10 seeds per cell drawn; the adaptive procedure reads them in
    its rounds, the fixed design all at once (one look at alpha). Verdicts compared on the same runs,
    and with the truth (A better, B equivalent)."""
    adaptive, fixed = v.SequentialDesign(DELTA, v.planned_looks(FIRST, MOST)), v.SequentialDesign(DELTA, (MOST,))
    runs, same, same_claim, true = [], 0, Counter(), Counter()
    shares = {"adaptive": Counter(), "fixed": Counter()}
    for _ in range(replicates):
        population = crossed_population(MEANS, images, seed_sd, IMAGE_SD, rng)
        drawn = {c: population.draw(c, 0, MOST, rng) for c in MEANS}
        result = v.run_adaptive(CLAIMS, lambda c, first, n, drawn=drawn: drawn[c].iloc[first:first + n], adaptive)
        at_ten = {claim.name: v.judge(claim, drawn, fixed, 0).verdict for claim in CLAIMS}
        at_end = {k: verdict.verdict for k, verdict in result.verdicts.items()}
        runs.append(result.runs)
        same += at_end == at_ten
        true["adaptive"] += at_end == TRUE_VERDICTS
        true["fixed"] += at_ten == TRUE_VERDICTS
        for k, verdict in at_ten.items():
            same_claim[k] += at_end[k] == verdict
            shares["adaptive"][(k, at_end[k])] += 1
            shares["fixed"][(k, verdict)] += 1
    return {"runs": float(np.mean(runs)), "runs_se": float(np.std(runs, ddof=1) / math.sqrt(replicates)),
            "fixed_runs": MOST * len(MEANS), "agree": same / replicates,
            "agree_claim": {k: n / replicates for k, n in same_claim.items()},
            "true": {d: true[d] / replicates for d in shares},
            "shares": {d: {k: n / replicates for k, n in s.items()} for d, s in shares.items()}}


def as_often(adaptive: float, fixed: float, replicates: int) -> bool:
    """The adaptive design reaches the true verdicts as often as the fixed one: not below it by more
    than 2 standard errors of the difference of two shares of ``replicates`` each."""
    se = math.sqrt((adaptive * (1 - adaptive) + fixed * (1 - fixed)) / replicates)
    return adaptive >= fixed - 2 * se


def _shares(shares: dict, claim: str) -> str:
    return ", ".join(f"{verdict} {share:.0%}" for (k, verdict), share in sorted(shares.items()) if k == claim)


def run(smoke: bool = False) -> list[Row]:
    replicates = SMOKE_REPLICATES if smoke else REPLICATES
    return [row for images, seed_sd in SCENARIOS for row in _rows(replicates, images, seed_sd)]


def _rows(replicates: int, images: int, seed_sd: float) -> list[Row]:
    started = time.perf_counter()
    out = compare(replicates, images, seed_sd, np.random.default_rng(25))
    ratio = out["runs"] / out["fixed_runs"]
    true = out["true"]
    same = as_often(true["adaptive"], true["fixed"], replicates)
    scenario = f"{images} test images, seed sd {seed_sd * 100:g} pp"
    design = (f"2 x 2, accuracy {BASE:.0%}, A = {EFFECT * 100:g} pp, B = 0, δ = {DELTA * 100:g} pp, "
              f"{replicates} replicates")
    verdicts = "; ".join(f"{claim.name}: adaptive {_shares(out['shares']['adaptive'], claim.name)} / fixed "
                         f"{_shares(out['shares']['fixed'], claim.name)}" for claim in CLAIMS)
    return [
        Row("verdicts", f"runs to the verdicts, adaptive / fixed 10 seeds, {scenario}", ratio, "x",
            "<= 0.6, true verdicts as often", ratio <= 0.6 and same, COMMAND,
            f"{out['runs']:.1f} runs (se {out['runs_se']:.1f}) vs {out['fixed_runs']} "
            f"(looks {v.planned_looks(FIRST, MOST)}); true verdicts "
            f"(A better, B equivalent): adaptive {true['adaptive']:.1%}, fixed {true['fixed']:.1%} "
            f"({'as often' if same else 'less often'}, 2 se); {design}; {time.perf_counter() - started:.0f} s"),
        Row("verdicts", f"same verdicts as fixed 10 seeds (both claims), {scenario}", out["agree"] * 100,
            "% of replicates", command=COMMAND,
            notes=", ".join(f"{k} {a:.0%}" for k, a in out["agree_claim"].items()) + f"; {verdicts}"),
    ]
