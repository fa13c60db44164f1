"""Pooled effects of a sweep: one crossed random-effects model of the per-image scores of every run.

Model, on the score scale (for accuracy the score is the 0/1 correctness of one test image):

    y[c, s, i] = mu[c] + u[c, i] + b[c, s] + e[c, s, i]

- ``mu[c]``: a fixed mean per configuration (cell). The factors' main effects and each Δ against
  the baseline are contrasts sum_c w_c mu[c] (``stats.intervals.contrast_weights``).
- ``b[c, s]``: the seed, nested in its configuration, with a variance per configuration.
- ``u[c, i]``: the test image, crossed with the seeds and shared by the configurations; its effect
  may differ between configurations (image x configuration) with any covariance across them.
- ``e[c, s, i]``: the seed x image residual, with a variance per configuration.

Estimator: closed-form method of moments (ANOVA estimators), Satterthwaite degrees of freedom.

- Fixed effects: each cell's mean of its run means. With every seed testing the same images this
  is the GLS estimate of the model for any variance components, also with unequal seeds per cell
  (the design satisfies Zyskind's condition), so no iteration is needed.
- Variance of a contrast L = sum_c w_c ybar_c: per cell, w_c^2 var(run means) / n_c (df n_c - 1;
  it holds the seed variance and the residual's share; ``stats.intervals.seed_term``), plus the
  image term N var_i(d_i) with d_i the image's contribution to L
  (``stats.intervals.image_contributions``; df N - 1), less the residual that both terms hold,
  sum_c w_c^2 MS_c / (n_c N) (MS_c: the seed x image mean square).
  For balanced data these are the ANOVA estimators, equal to REML where non-negative.
- The t quantile is taken at the Welch-Satterthwaite df of the summed terms, and the interval is
  never narrower than any one term's own t-interval (``stats.intervals.welch_satterthwaite_t``).
  This is where the pooling pays: a main effect of a 2 x 2 with 3 seeds per cell has up to 8 df
  (and a floor of t(2) x a quarter of its variance) instead of t(2) on all of it for the
  seed-matched contrasts, and a cell that got more seeds (the adaptive sweep) counts all of them.
- Measured coverage (tests/test_stats_mixed.py, 2,000 replicates): 94.8-96.7 % with 10 seeds,
  97.3-98.7 % with 3 seeds per cell (conservative: the floor), 94.5-98.0 % with seed sds of
  1 and 8 pp. Without the floor the Δ of the 8 pp cell covers 91-94 % (Welch's df runs high
  when the noisy cell's variance comes out small), so the floor stays.
- Tried instead of the floor: the generalized pivotal (fiducial) interval, estimate +- the
  quantile of |Z| sqrt(sum_k V_k f_k / chi2_fk), which integrates over each term's uncertainty
  rather than plugging in a df. 2,000 replicates per regime, another random stream than the
  tests' (a one-off script over fit_cell and the tests' draws): 98.4-100 % at 3 seeds, 95.8-97.8 % at 10, 94.4-99.8 %
  with seed sds of 1 and 8 pp: more conservative than the floor, so not taken. In the same
  draws the floor gave 97.2-98.6 %, 94.6-96.4 % and 93.6-98.1 % (93.6 %: the Δ of the 5-seed
  8 pp cell with seeds 8, 3, 3, 5; the test's stream gives >= 94 %), plain Satterthwaite
  95.4-97.4 %, 94.6-96.4 % and 92.8-96.6 %.
- Also tried: the Satterthwaite df from unbiased estimates of its numerator and denominator
  ((sum V)^2 - 2 sum V_k^2 / (f_k + 2) over sum V_k^2 / (f_k + 2); Welch's plug-in df runs low
  when the terms are equal, which is why it over-covers at 3 seeds). A third random stream,
  2,000 replicates per regime: 93.5-96.1 % at 3 seeds, 94.6-96.3 % at 10, but 91.1-95.1 % with
  seed sds of 1 and 8 pp, so not taken either. In that stream the floor gave 97.1-98.6 %,
  94.8-96.4 % and 93.6-98.2 % (93.6 %: the Δ of the 5-seed 8 pp cell again, as in the stream
  above: the floor under-covers that claim by about 1.4 pp; the test's stream happens to give >= 94 %).
- What an ideal interval reaches in these regimes (2026-12-06, a one-off script over the tests'
  draws, another random stream, 2,000 replicates per regime): estimate +- 1.96 x the true se
  (known variances) covered 93.7-96.6 % at 3 seeds and in the unequal-sd regimes, and the t at
  the true Satterthwaite df 93.6-96.9 %: the estimate of 3 skewed seed effects is not quite
  normal, and 2,000 replicates have a binomial se of 0.5 pp, so over some 50 claim x regime cells
  even a perfect interval lands outside 94-96 % in a few. Without the floor, the df from unbiased
  estimates gave 94.0-96.1 % at 3 seeds with equal sds (as the oracle) but 89.9-94.2 % with sds of
  1 and 8 pp, where the oracle gives 93.7-96.4 %: at 3 seeds the observed variance ratio cannot
  tell the two regimes apart often enough, so the floor's cost (97-99 % at 3 equal seeds) buys
  the unequal case.
- The same at 10,000 replicates per regime (binomial se 0.22 pp; 2026-12-06, a one-off script over
  the tests' draws, stream 777): these intervals cover 97.5-98.5 % at 3 equal seeds, 94.5-96.2 %
  at 10, 95.8-97.6 % with seed sds 1 / 8 pp at 3 seeds each, and 93.7-96.5 % with 8, 3, 3, 5 seeds
  (93.7 %: the Δ of the 5-seed 8 pp cell, which the test's 2,000-replicate stream puts at >= 94
  %). The interval that knows the true se (estimate +- 1.96 x the estimate's sd over the 10,000)
  covers 94.0-95.3 % in every one of these cells: at this precision 94-96 % is reachable with the
  variances known, and these intervals miss it both ways, wide at 3 equal seeds (the floor) and
  1.3 pp short in the unbalanced unequal case. Plain Satterthwaite gives 91.9-97.1 %, the
  unbiased-estimate df 90.6-96.2 %, either one with the floor 93.8-98.5 %: no variant tried meets
  94-96 % in every cell.

Why seed variances per configuration and not one pooled seed variance: the demo's masked images
have a seed sd of about 1 pp and the raw images about 8 pp; one pooled variance gives a Δ between
them df = sum(n_c - 1) where the evidence is that of the noisy cell alone (df near n_raw - 1),
and the interval under-covers. Satterthwaite's df falls back to that on its own, and equals the
pooled df when the variances agree. Why not statsmodels MixedLM with crossed variance components
(one group, seed and image as variance components): one REML fit of 4 cells x 3-8 seeds x 180
images (3,420 rows) took 12.4 s on this machine, so 2,000 simulation replicates per regime would
take hours; it also assumes one seed variance, no image x configuration term, and gives z
intervals (no df) where the seeds are few. Why not a binomial GLMM (BinomialBayesMixedGLM): the claims are about
accuracy in percentage points, which a logit-scale model gives only after back-transforming and
averaging over the image distribution, and its variational posterior has no coverage guarantee.

Seeds are taken as independent across configurations. Where equal seeds share a split, their
effects correlate across configurations and these intervals are conservative; the seed-matched
intervals of ``stats.intervals.total_contrast`` remain the per-cell check.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xray_ablate.stats import intervals
from xray_ablate.stats.verdicts import Claim

METHOD = "crossed moments, Satterthwaite df"
COLUMNS = ["claim", "estimate", "low", "high", "p", "df", "se", "se_seed", "se_image", "n_runs", "method", "reason"]


@dataclass(frozen=True)
class CellFit:
    """What a contrast needs of one cell's runs, computed once per cell (arrays over replicates)."""

    mean: np.ndarray  # the mean of the run means
    seed_term: np.ndarray  # var(run means) / n: the seed variance and the residual's share
    contributions: np.ndarray  # (..., images): each image's share of the mean
    overlap: np.ndarray  # the residual both terms hold, MS / (n N); 0 when a seed missed an image
    n_seeds: int


def fit_cell(y: np.ndarray) -> CellFit:
    """CellFit of scores y (..., seeds, images), NaN where a seed did not test an image; leading
    axes are independent replicates."""
    n = y.shape[-2]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a seed without images: NaN mean
        means = np.nanmean(y, axis=-1)
        overlap = intervals.residual_share(y)
        return CellFit(means.mean(axis=-1), intervals.seed_term(means, overlap), intervals.image_contributions(y),
                       overlap, n)


def contrast_interval(fits: Sequence[CellFit], weights: Sequence[float],
                      confidence: float = 0.95) -> dict[str, np.ndarray]:
    """estimate, low, high, p, df, se, se_seed, se_image of sum_c w_c (cell mean) in the crossed
    model (see the module docstring), the cells fitted by ``fit_cell`` on one image axis.

    NaN bounds where a cell has fewer than 2 seeds or there are fewer than 2 images.
    """
    n_images = fits[0].contributions.shape[-1]
    estimate = sum(w * f.mean for f, w in zip(fits, weights, strict=True))
    seed_terms = [w**2 * f.seed_term for f, w in zip(fits, weights, strict=True)]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all terms 0 (flat): its p is NaN
        if n_images >= 2:
            contribution = sum(w * f.contributions for f, w in zip(fits, weights, strict=True))
            overlap = sum(w**2 * f.overlap for f, w in zip(fits, weights, strict=True))
            image = np.maximum(n_images * np.var(contribution, axis=-1, ddof=1) - overlap, 0.0)
        else:
            image = np.full(np.shape(estimate), np.nan)
        seed = np.sum(seed_terms, axis=0)
        low, high, p, df = intervals.welch_satterthwaite_t(
            estimate, [*seed_terms, image], [*(f.n_seeds - 1 for f in fits), n_images - 1], confidence)
    usable = np.isfinite(seed) & np.isfinite(image)
    flat = (seed + np.where(usable, image, 0.0)) == 0  # every run and image agree: no spread
    return {"estimate": np.asarray(estimate, float),
            "low": np.where(usable, np.where(flat, estimate, low), np.nan),
            "high": np.where(usable, np.where(flat, estimate, high), np.nan),
            "p": np.where(usable & ~flat, p, np.nan), "df": np.where(usable & ~flat, df, np.nan),
            "se": np.where(usable, np.sqrt(seed + image), np.nan),
            "se_seed": np.sqrt(seed), "se_image": np.sqrt(image)}


def variance_components(cells: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per cell: seeds, images, mean and the fitted sds of the seed, image and residual effects.

    seed_sd^2 = var(run means) - MS / N; image_sd^2 = var_i(seed-averaged score) - MS / n;
    residual_sd^2 = MS, the seed x image mean square (ANOVA estimators, floored at 0). The
    residual and the corrections need every seed to test every image; otherwise residual_sd is
    NaN and the other two are uncorrected.
    """
    rows = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for cell, frame in _aligned(cells).items():
            y = frame.to_numpy(float)
            n, n_images = y.shape
            complete = np.isfinite(y).all() and n >= 2 and n_images >= 2
            ms = float(intervals.interaction_mean_square(y)) if complete else math.nan
            means, per_image = np.nanmean(y, axis=1), np.nanmean(y, axis=0)
            seed_var = np.var(means, ddof=1) if n >= 2 else math.nan
            image_var = np.var(per_image, ddof=1) if n_images >= 2 else math.nan
            if complete:
                seed_var, image_var = seed_var - ms / n_images, image_var - ms / n
            rows.append({"cell": cell, "n_seeds": n, "n_images": n_images, "mean": float(means.mean()),
                         "seed_sd": math.sqrt(max(seed_var, 0.0)) if np.isfinite(seed_var) else math.nan,
                         "image_sd": math.sqrt(max(image_var, 0.0)) if np.isfinite(image_var) else math.nan,
                         "residual_sd": math.sqrt(ms)})
    return pd.DataFrame(rows).set_index("cell")


def pooled_intervals(cells: Mapping[str, pd.DataFrame], claims: Sequence[Claim],
                     confidence: float = 0.95) -> pd.DataFrame:
    """One row per claim (stats.claims.ablation_claims: each Δ vs the baseline, each main effect),
    each from the crossed model fitted to every run of every cell (module docstring).

    ``cells``: cell label -> seeds x image ids of per-image scores (NaN: not tested). NaN bounds
    with the reason in ``reason``: a cell with one seed, or one test image.
    """
    frames = _aligned(cells)
    fits = {c: fit_cell(f.to_numpy(float)) for c, f in frames.items()}
    return pd.DataFrame([_claim_row(frames, fits, claim, confidence) for claim in claims], columns=COLUMNS)


def _aligned(cells: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every cell on the union of the images any seed tested; seeds that tested none left out."""
    images = sorted(set().union(*(f.columns[f.notna().any()] for f in cells.values())))
    return {c: f.reindex(columns=images).dropna(how="all") for c, f in cells.items()}


def _claim_row(frames: dict[str, pd.DataFrame], fits: dict[str, CellFit], claim: Claim,
               confidence: float) -> dict:
    used = {c: w for c, w in claim.weights.items() if w != 0}
    row = {"claim": claim.name, "n_runs": sum(len(frames[c]) for c in used), "method": METHOD}
    fit = contrast_interval([fits[c] for c in used], list(used.values()), confidence)
    row |= {k: float(v) for k, v in fit.items()}
    reason = ""
    few_seeds = [c for c in used if len(frames[c]) < 2]
    if few_seeds:
        reason = f"{few_seeds[0]!r} has {len(frames[few_seeds[0]])} seed: no seed-to-seed variance"
    elif next(iter(frames.values())).shape[1] < 2:
        reason = "fewer than 2 test images: no image-to-image variance"
    return row | {"reason": reason}
