"""Runs to reach the verdicts: the adaptive sweep (3 -> 10 seeds) vs a fixed 10 seeds, simulated 2 x 2."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from xray_ablate.bench.rows import Row
from xray_ablate.stats import verdicts as v
from xray_ablate.stats.intervals import cell_label, contrast_weights
from xray_ablate.stats.simulate import crossed_population

COMMAND = "python -m xray_ablate.bench verdicts"
# Demo-like: 180 test images, 80 % accuracy, seed sd 3 pp per cell, most images nearly always
# right or wrong (difficulty sd 2 on the probit scale); A changes accuracy by 8 pp, B not at all.
# And the study's test set (about 1,600 of its 6,504 images at 25 %), where the null effect B can
# be shown equivalent within δ: with 180 images neither design can, and B stays unresolved.
IMAGE_COUNTS, BASE, SEED_SD, IMAGE_SD, EFFECT, DELTA = (180, 1600), 0.80, 0.03, 2.0, 0.08, 0.02
FIRST, MOST = 3, 10
REPLICATES, SMOKE_REPLICATES = 400, 8
FACTORS, LEVELS = ("A", "B"), {"A": ("a0", "a1"), "B": ("b0", "b1")}
CLAIMS = [v.Claim(f, contrast_weights(FACTORS, LEVELS, {f: (LEVELS[f][1], LEVELS[f][0])})) for f in FACTORS]
MEANS = {cell_label((a, b)): BASE + (EFFECT / 2 if a == "a1" else -EFFECT / 2)
         for a in LEVELS["A"] for b in LEVELS["B"]}


def compare(replicates: int, images: int, rng: np.random.Generator) -> dict:
    """Each replicate: one test set, 10 seeds per cell drawn; the adaptive procedure reads them in
    its rounds, the fixed design all at once (one look at alpha). Verdicts compared on the same runs."""
    adaptive, fixed = v.SequentialDesign(DELTA, v.planned_looks(FIRST, MOST)), v.SequentialDesign(DELTA, (MOST,))
    runs, same, same_claim = [], 0, Counter()
    shares = {"adaptive": Counter(), "fixed": Counter()}
    for _ in range(replicates):
        population = crossed_population(MEANS, images, SEED_SD, IMAGE_SD, rng)
        drawn = {c: population.draw(c, 0, MOST, rng) for c in MEANS}
        result = v.run_adaptive(CLAIMS, lambda c, first, n, drawn=drawn: drawn[c].iloc[first:first + n], adaptive)
        at_ten = {claim.name: v.judge(claim, drawn, fixed, 0).verdict for claim in CLAIMS}
        runs.append(result.runs)
        same += all(result.verdicts[k].verdict == at_ten[k] for k in at_ten)
        for k, verdict in at_ten.items():
            same_claim[k] += result.verdicts[k].verdict == verdict
            shares["adaptive"][(k, result.verdicts[k].verdict)] += 1
            shares["fixed"][(k, verdict)] += 1
    return {"runs": float(np.mean(runs)), "fixed_runs": MOST * len(MEANS), "agree": same / replicates,
            "agree_claim": {k: n / replicates for k, n in same_claim.items()},
            "shares": {d: {k: n / replicates for k, n in s.items()} for d, s in shares.items()}}


def _shares(shares: dict, claim: str) -> str:
    return ", ".join(f"{verdict} {share:.0%}" for (k, verdict), share in sorted(shares.items()) if k == claim)


def run(smoke: bool = False) -> list[Row]:
    replicates = SMOKE_REPLICATES if smoke else REPLICATES
    return [row for images in IMAGE_COUNTS for row in _rows(replicates, images)]


def _rows(replicates: int, images: int) -> list[Row]:
    started = time.perf_counter()
    out = compare(replicates, images, np.random.default_rng(25))
    ratio = out["runs"] / out["fixed_runs"]
    design = (f"2 x 2, accuracy {BASE:.0%}, seed sd {SEED_SD * 100:g} pp, A = "
              f"{EFFECT * 100:g} pp, B = 0, δ = {DELTA * 100:g} pp, {replicates} replicates")
    verdicts = "; ".join(f"{claim.name}: adaptive {_shares(out['shares']['adaptive'], claim.name)} / fixed "
                         f"{_shares(out['shares']['fixed'], claim.name)}" for claim in CLAIMS)
    return [
        Row("verdicts", f"runs to the verdicts, adaptive / fixed 10 seeds, {images} test images", ratio, "x",
            "<= 0.6", ratio <= 0.6, COMMAND,
            f"{out['runs']:.1f} runs vs {out['fixed_runs']} (looks {v.planned_looks(FIRST, MOST)}); "
            f"{design}; {time.perf_counter() - started:.0f} s"),
        Row("verdicts", f"same verdicts as fixed 10 seeds (both claims), {images} test images", out["agree"] * 100,
            "% of replicates", command=COMMAND,
            notes=", ".join(f"{k} {a:.0%}" for k, a in out["agree_claim"].items()) + f"; {verdicts}"),
    ]
