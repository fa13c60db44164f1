"""Intervals and tests over seeds and test images: pure functions, thin wrappers of scipy and statsmodels.

Nothing here reads MLflow or knows about tables; every function takes arrays or a tidy frame and
returns numbers, so the tests can compare each one with scipy/statsmodels on the same data.
Conventions: ``confidence`` is the interval's level (0.95); a sample with fewer than 2 values
has no spread, so its intervals and tests are NaN (the tables say why).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats
from statsmodels.formula.api import ols
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.power import TTestIndPower, TTestPower

from xray_ablate.config.metrics import IMAGE_METRICS

NAN_PAIR = (math.nan, math.nan)


def _values(x) -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def t_interval(x, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean: scipy.stats.t.interval(df=n-1, loc=mean, scale=sem)."""
    x = _values(x)
    if len(x) < 2:
        return NAN_PAIR
    sem = stats.sem(x)
    if sem == 0:
        return float(x.mean()), float(x.mean())
    low, high = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sem)
    return float(low), float(high)


def bootstrap_interval(x, confidence: float = 0.95, n_resamples: int = 9999,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds (scipy.stats.bootstrap)."""
    x = _values(x)
    if len(x) < 2:
        return NAN_PAIR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                              method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class Comparison:
    """Mean difference a - b with its interval and the p-value of the test that produced them."""

    delta: float
    low: float
    high: float
    pvalue: float
    test: str  # "paired t" | "Welch t" | "none"
    n_a: int
    n_b: int
    n_pairs: int  # seeds used by the paired test (0 for Welch)
    df: float


def paired_comparison(a, b, confidence: float = 0.95) -> Comparison:
    """Paired t-test over matched values (scipy.stats.ttest_rel) and its interval of mean(a - b)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    delta = float(np.mean(a - b)) if len(a) else math.nan
    if len(a) < 2:
        return Comparison(delta, *NAN_PAIR, math.nan, "paired t", len(a), len(b), len(a), math.nan)
    if _no_spread(a - b):  # identical differences: no spread, the t statistic is undefined
        return Comparison(delta, delta, delta, math.nan, "paired t", len(a), len(b), len(a),
                          len(a) - 1)
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(confidence)
    return Comparison(delta, float(ci.low), float(ci.high), float(res.pvalue), "paired t",
                      len(a), len(b), len(a), float(res.df))


def _no_spread(x: np.ndarray) -> bool:
    """All values equal up to rounding: accuracies k/N scaled to percent differ by ~1e-14 where
    the counts agree, which ttest_rel reads as a spread and turns into p ~ 1e-15."""
    return bool(np.ptp(x) <= 1e-9 * max(1.0, float(np.max(np.abs(x)))))


def welch_comparison(a, b, confidence: float = 0.95) -> Comparison:
    """Welch's unequal-variance t-test (scipy.stats.ttest_ind(equal_var=False)) and its interval."""
    a, b = _values(a), _values(b)
    delta = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Comparison(delta, *NAN_PAIR, math.nan, "Welch t", len(a), len(b), 0, math.nan)
    if _no_spread(a) and _no_spread(b):
        return Comparison(delta, delta, delta, math.nan, "Welch t", len(a), len(b), 0, math.nan)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence)
    return Comparison(delta, float(ci.low), float(ci.high), float(res.pvalue), "Welch t",
                      len(a), len(b), 0, float(res.df))


def compare(a: pd.Series, b: pd.Series, *, pairable: bool = True,
            confidence: float = 0.95) -> Comparison:
    """Compare a with b, both indexed by seed.

    When the seeds pair (``pairable``: same split for the same seed) and at least two seeds are
    common to both, the paired t-test over the common seeds; otherwise Welch's test over all values.
    """
    a, b = a.dropna(), b.dropna()
    common = a.index.intersection(b.index)
    if pairable and len(common) >= 2:
        common = common.sort_values()
        result = paired_comparison(a.loc[common].to_numpy(), b.loc[common].to_numpy(), confidence)
        return Comparison(result.delta, result.low, result.high, result.pvalue, result.test,
                          len(a), len(b), result.n_pairs, result.df)
    return welch_comparison(a.to_numpy(), b.to_numpy(), confidence)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values; NaN entries stay NaN and do not count. The step-down of statsmodels'
    multipletests(method="holm") (tests/test_report_stats.py checks them equal), which calls
    gc.collect() on every Holm call: 0.13 s each in a report's process, more in a long one."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok])]
    stepped = np.maximum.accumulate(p[order] * np.arange(len(order), 0, -1))
    out[order] = np.minimum(stepped, 1.0)
    return out


def prob_improvement(a, b) -> float:
    """P(a random run of a beats a random run of b), ties counting one half.

    The common-language effect size (Bouthillier et al. 2021, "probability of outperforming"),
    estimated over all n_a x n_b pairs of runs as the Mann-Whitney U statistic / (n_a n_b).
    """
    a, b = _values(a), _values(b)
    if not len(a) or not len(b):
        return math.nan
    return float(stats.mannwhitneyu(a, b).statistic / (len(a) * len(b)))


def min_detectable_difference(n: int, sd: float, alpha: float = 0.05, power: float = 0.8,
                              paired: bool = False) -> float:
    """Smallest true difference a two-sided t-test detects with ``power`` at n per group.

    Unpaired: two samples of n (TTestIndPower), sd = the seed-to-seed sd. Paired: n pairs
    (TTestPower), sd = the sd of the paired differences.
    """
    if n < 2 or not np.isfinite(sd) or sd <= 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if paired:
            d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power)
        else:
            d = TTestIndPower().solve_power(effect_size=None, nobs1=n, alpha=alpha, power=power,
                                            ratio=1.0)
    return float(np.squeeze(d)) * sd


def seeds_needed(diff: float, sd: float, alpha: float = 0.05, power: float = 0.8,
                 paired: bool = False) -> float:
    """Seeds per configuration (pairs when ``paired``) for a two-sided t-test to detect ``diff``.

    Rounded up; at least 2. NaN without a usable sd.
    """
    if not np.isfinite(sd) or sd <= 0 or diff <= 0:
        return math.nan
    effect = diff / sd
    analysis = TTestPower() if paired else TTestIndPower()
    kwargs = {"nobs": 2} if paired else {"nobs1": 2, "ratio": 1.0}
    at_two = analysis.power(effect_size=effect, alpha=alpha, **kwargs)
    if not np.isfinite(at_two) or at_two >= power:  # NaN: an effect so large the cdf underflows
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if paired:
            n = TTestPower().solve_power(effect_size=effect, nobs=None, alpha=alpha, power=power)
        else:
            n = TTestIndPower().solve_power(effect_size=effect, nobs1=None, alpha=alpha,
                                            power=power, ratio=1.0)
    n = float(np.squeeze(n))
    return float(math.ceil(n - 1e-9)) if np.isfinite(n) else math.nan


# --- factorial designs ---------------------------------------------------------------------------

def cell_label(row: Sequence[str]) -> str:
    return " | ".join(map(str, row))


def _cell_means_fit(data: pd.DataFrame, factors: Sequence[str], response: str):
    """OLS of the cell-means model (one indicator per factor combination, no intercept)."""
    cells = data[list(factors)].astype(str).apply(cell_label, axis=1)
    exog = pd.get_dummies(cells).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no residual df: scale is NaN
        return OLS(data[response].astype(float).to_numpy(), exog).fit()


def contrast_weights(factors: Sequence[str], levels: Mapping[str, Sequence[str]],
                     signs: Mapping[str, tuple[str, str]]) -> dict[str, float]:
    """Weight per cell label: +-1 per factor in ``signs`` (level, reference), averaged over the
    combinations of the other factors."""
    others = [f for f in factors if f not in signs]
    combos = list(itertools.product(*[levels[f] for f in others]))
    weights: dict[str, float] = {}
    for combo in combos:
        fixed = dict(zip(others, combo, strict=True))
        for choice in itertools.product(*[(0, 1) for _ in signs]):
            level = dict(fixed)
            sign = 1.0
            for (factor, (hi, lo)), pick in zip(signs.items(), choice, strict=True):
                level[factor] = hi if pick == 0 else lo
                sign *= 1.0 if pick == 0 else -1.0
            label = cell_label([level[f] for f in factors])
            weights[label] = weights.get(label, 0.0) + sign / len(combos)
    return weights


def _contrast_rows(factors: Sequence[str], levels: Mapping[str, Sequence[str]],
                   signs: Mapping[str, tuple[str, str]], names: Sequence[str]) -> np.ndarray:
    weights = contrast_weights(factors, levels, signs)
    return np.array([[weights.get(n, 0.0) for n in names]])


def _contrast_record(fit, weights: np.ndarray, confidence: float) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test = fit.t_test(weights)
    estimate = float(np.squeeze(test.effect))
    if fit.df_resid > 0:
        low, high = (float(v) for v in np.squeeze(test.conf_int(alpha=1 - confidence)))
        pvalue = float(np.squeeze(test.pvalue))
    else:
        low = high = pvalue = math.nan
    return {"estimate": estimate, "low": low, "high": high, "p": pvalue,
            "df_resid": float(fit.df_resid)}


def main_effects(data: pd.DataFrame, factors: Sequence[str], response: str,
                 references: Mapping[str, str], confidence: float = 0.95) -> pd.DataFrame:
    """Main effect of each level against its factor's reference, averaged over the other factors.

    ``data`` holds one row per run of a crossed design (every combination of ``factors`` present).
    The effect of level l of F is the mean over the combinations of the other factors of
    (cell mean at l - cell mean at the reference); for on/off factors that is "on - off averaged
    over the others". Intervals and p-values are the t-test of that contrast in the cell-means
    OLS model (statsmodels), whose residual variance is the pooled seed-to-seed variance.
    """
    levels = {f: sorted(data[f].astype(str).unique()) for f in factors}
    fit = _cell_means_fit(data, factors, response)
    names = list(fit.model.exog_names)
    rows = []
    for factor in factors:
        ref = references[factor]
        for level in levels[factor]:
            if level == ref:
                continue
            weights = _contrast_rows(factors, levels, {factor: (level, ref)}, names)
            rows.append({"factor": factor, "level": level, "reference": ref,
                         **_contrast_record(fit, weights, confidence)})
    return pd.DataFrame(rows, columns=["factor", "level", "reference", "estimate", "low", "high",
                                       "p", "df_resid"])


def interactions(data: pd.DataFrame, factors: Sequence[str], response: str,
                 references: Mapping[str, str], confidence: float = 0.95) -> pd.DataFrame:
    """Two-way interactions as differences of differences, averaged over the remaining factors.

    For factors A (level a vs reference a0) and B (b vs b0): (effect of a at B=b) - (effect of a
    at B=b0) = mean[y(a,b) - y(a0,b) - y(a,b0) + y(a0,b0)]; tested like ``main_effects``.
    """
    levels = {f: sorted(data[f].astype(str).unique()) for f in factors}
    fit = _cell_means_fit(data, factors, response)
    names = list(fit.model.exog_names)
    rows = []
    for fa, fb in itertools.combinations(factors, 2):
        for la in levels[fa]:
            for lb in levels[fb]:
                if la == references[fa] or lb == references[fb]:
                    continue
                weights = _contrast_rows(factors, levels, {fa: (la, references[fa]),
                                                           fb: (lb, references[fb])}, names)
                rows.append({"factor_a": fa, "level_a": la, "reference_a": references[fa],
                             "factor_b": fb, "level_b": lb, "reference_b": references[fb],
                             **_contrast_record(fit, weights, confidence)})
    return pd.DataFrame(rows, columns=["factor_a", "level_a", "reference_a", "factor_b", "level_b",
                                       "reference_b", "estimate", "low", "high", "p", "df_resid"])


def anova_formula(factors: Sequence[str], response: str) -> str:
    """The saturated model of the crossed factors (every interaction), sum-to-zero coding.

    Its residual is the seed-to-seed variance within factor combinations, the same residual as
    the cell-means model of ``main_effects`` and ``interactions``.
    """
    return f"{response} ~ " + " * ".join(f"C({f}, Sum)" for f in factors)


def anova_table(data: pd.DataFrame, factors: Sequence[str], response: str) -> pd.DataFrame:
    """Type-III ANOVA (statsmodels ols + anova_lm) of the saturated model: rows for the main
    effects, the two-way interactions and the residual (higher-order interactions are in the model
    but not shown, so they do not inflate the residual).

    With sum coding, type III tests the unweighted cell-mean contrasts of ``main_effects`` (for a
    two-level factor F = t**2 of that contrast), also when seeds are unbalanced; for a balanced
    design it equals type II. Without seed replication (one run per combination, no residual df)
    the sums of squares are the sequential ones (equal to type III for a balanced design, which
    one run per combination is) and F and p are NaN.
    """
    fit = ols(anova_formula(factors, response), data=data).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fit.df_resid > 0:
            table = anova_lm(fit, typ=3).drop(index="Intercept")
        else:
            table = anova_lm(fit, typ=1)
            table["F"] = table["PR(>F)"] = math.nan
            table.loc["Residual", "sum_sq"] = math.nan
    table = table[[t == "Residual" or t.count(":") < 2 for t in table.index]]
    table = table.reindex(columns=["sum_sq", "df", "F", "PR(>F)"])
    table.index = [_term_name(t) for t in table.index]
    table.index.name = "term"
    return table.reset_index().rename(columns={"PR(>F)": "p"})


def residual_df(data: pd.DataFrame, factors: Sequence[str]) -> int:
    """Residual df of the cell-means (saturated) model: runs minus factor combinations."""
    return int(len(data) - data.groupby(list(factors)).ngroups)


def _term_name(term: str) -> str:
    return ":".join(part.removeprefix("C(").removesuffix(", Sum)") for part in term.split(":"))


# --- test-set sampling: per-image scores -------------------------------------------------------
#
# A run's metric is the mean over its test images of a per-image score (correctness for accuracy;
# see ``image_scores`` for the others). A configuration's runs form a matrix seeds x images, NaN
# where an image is not in that seed's test set (split.vary_with_seed); a fixed split has none.

@dataclass(frozen=True)
class TotalInterval:
    """Mean over seeds with a CI that adds the between-seed and the between-image variance."""

    estimate: float
    low: float
    high: float
    pvalue: float  # of estimate = 0 (meaningful for a difference)
    se_seed: float  # standard error from the seeds alone
    se_image: float  # standard error from the test images alone
    df: float  # Welch-Satterthwaite degrees of freedom of the sum
    n_seeds: int
    n_images: int  # distinct test images

    @property
    def se(self) -> float:
        return math.hypot(self.se_seed, self.se_image)


def welch_satterthwaite_t(estimate, variances: Sequence, dfs: Sequence, confidence: float = 0.95):
    """(low, high, p, df) of estimate +- t * sqrt(sum of variances), t at the Welch-Satterthwaite df
    sum(v)^2 / sum(v^2 / df); never narrower than any one term's own t-interval (nor p smaller).

    With 3 seeds the Welch-Satterthwaite df runs high exactly when the seed variance came out
    small; the floor keeps the total interval at least as wide as the seed-only one, which is exact
    for normal seed effects. Vectorised: arguments may be arrays of one shape; a zero term drops
    out of the df.
    """
    v = np.stack([np.asarray(x, float) for x in variances])
    d = np.stack([np.broadcast_to(np.asarray(x, float), v.shape[1:]) for x in dfs])
    total = v.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = total**2 / np.sum(np.where(v > 0, v**2 / d, 0.0), axis=0)
        t = np.abs(estimate) / np.sqrt(np.concatenate([total[None], v]))
        # scipy.special's t quantile and tail (what scipy.stats.t calls), without its per-call
        # argument handling: the simulations call this some 10^4 times
        half = special.stdtrit(np.concatenate([df[None], d]), 0.5 + confidence / 2) * np.sqrt(
            np.concatenate([total[None], v]))
        p = 2 * special.stdtr(np.concatenate([df[None], d]), -t)
    half, p = np.nanmax(half, axis=0), np.nanmax(np.where(np.concatenate([total[None], v]) > 0, p,
                                                          np.nan), axis=0)
    return estimate - half, estimate + half, p, df


def image_contributions(y: np.ndarray) -> np.ndarray:
    """Each image's share of the mean over seeds: the sum over the seeds that tested it of
    y[s, i] / (n_seeds * N_s), for y of shape (..., seeds, images). Summed over images it is the
    estimate; n_images * var of it is the variance of the estimate from sampling the test images.
    With a fixed split that is var_i(seed-averaged score) / N (images shared by all seeds count
    once); with a split per seed, each seed's own images add their term."""
    per_seed = np.sum(np.isfinite(y), axis=-1, keepdims=True)
    return np.nansum(y / (y.shape[-2] * per_seed), axis=-2)


def image_variance(y: np.ndarray) -> np.ndarray:
    """The image term: n_images * var(image_contributions(y)) over the last axis, for y of shape
    (..., seeds, images); NaN with fewer than 2 images.

    When every seed tested every image (fixed split) the seed x image residual mean square / (n N)
    is taken off: the run means' variance already holds that part, so the plain sum of the two
    terms would count it twice (two-way random-effects variance of the grand mean).
    """
    n_seeds, n = y.shape[-2], y.shape[-1]
    if n < 2:
        return np.full(y.shape[:-2], np.nan)
    term = n * np.var(image_contributions(y), axis=-1, ddof=1)
    if n_seeds < 2 or not np.isfinite(y).all():
        return term
    return np.maximum(term - interaction_mean_square(y) / (n_seeds * n), 0.0)


def interaction_mean_square(y: np.ndarray) -> np.ndarray:
    """Seed x image residual mean square of y (..., seeds, images), every seed testing every image
    (two-way ANOVA without replication); its expectation is the per-image noise variance."""
    n_seeds, n = y.shape[-2], y.shape[-1]
    resid = (y - y.mean(axis=-1, keepdims=True) - y.mean(axis=-2, keepdims=True)
             + y.mean(axis=(-2, -1), keepdims=True))
    return np.sum(resid**2, axis=(-2, -1)) / ((n_seeds - 1) * (n - 1))


def seed_variance(means: np.ndarray) -> np.ndarray:
    """var(run means) / n over the last axis (NaN with fewer than 2 seeds)."""
    n = means.shape[-1]
    if n < 2:
        return np.full(means.shape[:-1], np.nan)
    return np.var(means, axis=-1, ddof=1) / n


def residual_share(y: np.ndarray) -> np.ndarray:
    """MS / (n N), the seed x image residual's share of the variance of the mean of y (..., seeds,
    images), where every seed tested every image; else 0 (and with fewer than 2 seeds or images)."""
    n, n_images = y.shape[-2], y.shape[-1]
    if n < 2 or n_images < 2:
        return np.zeros(y.shape[:-2])
    complete = np.isfinite(y).all(axis=(-2, -1))
    return np.where(complete, interaction_mean_square(np.where(np.isfinite(y), y, 0.0)), 0.0) / (n * n_images)


def seed_term(means: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """The seed term of a mean over seeds x images: ``seed_variance(means)``, except where the run
    means agree (to rounding) while the runs differ image by image. Two seeds with the same count
    difference give that by coincidence, and a term of 0 (with the image term, which leaves the
    residual to this one, floored at 0) made a zero-width interval and a confident verdict. There
    the term is ``residual`` (``residual_share`` of the runs), the least it holds in expectation
    (the seed variance component truncated at 0, as ``stats.mixed.variance_components`` does)."""
    term = seed_variance(means)
    if means.shape[-1] < 2:
        return term
    agree = np.ptp(means, axis=-1) <= 1e-9 * np.maximum(1.0, np.max(np.abs(means), axis=-1))
    return np.where(agree, residual, term)


def _record(estimate: float, seed_parts: list[tuple[float, int]], image_var: float, n_images: int,
            n_seeds: int, confidence: float) -> TotalInterval:
    se_seed = math.sqrt(sum(v for v, _ in seed_parts))
    se_image = math.sqrt(image_var)
    variances = [v for v, _ in seed_parts] + [image_var]
    if not (np.all(np.isfinite(variances)) and np.isfinite(estimate)):
        return TotalInterval(estimate, *NAN_PAIR, math.nan, se_seed, se_image, math.nan, n_seeds,
                             n_images)
    if sum(variances) == 0:  # every run and image agree: no spread to measure
        return TotalInterval(estimate, estimate, estimate, math.nan, 0.0, 0.0, math.nan, n_seeds,
                             n_images)
    low, high, p, df = welch_satterthwaite_t(estimate, variances,
                                             [d for _, d in seed_parts] + [n_images - 1], confidence)
    return TotalInterval(estimate, float(low), float(high), float(p), se_seed, se_image, float(df),
                         n_seeds, n_images)


def _tested(scores: pd.DataFrame) -> pd.DataFrame:
    """Without the images no seed tested."""
    return scores.dropna(axis=1, how="all")


def _run_means(scores: pd.DataFrame) -> np.ndarray:
    return scores.mean(axis=1, skipna=True).to_numpy(float)


def total_interval(scores: pd.DataFrame, confidence: float = 0.95) -> TotalInterval:
    """CI of a configuration's mean metric over new seeds AND new test images.

    ``scores``: seeds x image ids of per-image scores (NaN = image not in that seed's test set).
    Variance = var(run means) / n (``seed_term``) + the image term of ``image_contributions``; t
    quantile at the Welch-Satterthwaite df. NaN bounds with fewer than 2 seeds or 2 images.
    """
    y = _tested(scores).to_numpy(float)
    means = _run_means(scores)
    return _record(float(means.mean()) if len(means) else math.nan,
                   [(float(seed_term(means, residual_share(y))), len(means) - 1)],
                   float(image_variance(y)), y.shape[1], len(means), confidence)


def total_difference(a: pd.DataFrame, b: pd.DataFrame, confidence: float = 0.95) -> TotalInterval:
    """CI and p-value of mean(a) - mean(b) over new seeds and new test images.

    With at least 2 seeds common to both (equal seeds share a split) the comparison is paired:
    the seed term is var(seed-matched run differences) / pairs. Otherwise the two seed terms add
    (Welch). The image term is that of the per-image differences of the contributions (an image
    only one side tested counts with the other side's contribution 0).
    """
    common = a.index.intersection(b.index).sort_values()
    paired = len(common) >= 2
    if paired:
        a, b = a.loc[common], b.loc[common]
    ma, mb = _run_means(a), _run_means(b)
    ta, tb = _tested(a), _tested(b)
    if paired and ta.columns.equals(tb.columns):  # per-image differences of matched runs
        y = ta.to_numpy(float) - tb.to_numpy(float)
        parts = [(float(seed_term(ma - mb, residual_share(y))), len(common) - 1)]
    else:  # contributions (see image_contributions) of each side, 0 where it lacks the image
        columns = ta.columns.union(tb.columns)
        y = np.stack([_contribution_row(ta, columns) - _contribution_row(tb, columns)])
        parts = ([(float(seed_variance(ma - mb)), len(common) - 1)] if paired
                 else [(float(seed_variance(m)), len(m) - 1) for m in (ma, mb)])
    estimate = float(ma.mean() - mb.mean()) if len(ma) and len(mb) else math.nan
    return _record(estimate, parts, float(image_variance(y)), y.shape[1],
                   len(common) if paired else min(len(ma), len(mb)), confidence)


def total_contrast(cells: Mapping[str, pd.DataFrame], weights: Mapping[str, float],
                   confidence: float = 0.95) -> TotalInterval:
    """CI and p-value of a factorial contrast (a main effect or an interaction: sum over cells of
    weight x cell mean) over new seeds and new test images.

    ``cells``: cell label -> seeds x image ids of per-image scores. The contrast is taken per seed
    and per image over the seeds every weighted cell ran (equal seeds share a split), so its
    seed term is that of the seed-matched contrasts and its image term that of the per-image
    contrasts, as for a paired difference. NaN bounds with fewer than 2 common seeds.
    """
    used = {c: cells[c] for c, w in weights.items() if w != 0}
    seeds = sorted(set.intersection(*(set(frame.index) for frame in used.values()))) if used else []
    if len(seeds) < 2:
        return _record(math.nan, [(math.nan, 1)], math.nan, 0, len(seeds), confidence)
    columns = pd.Index(sorted(set().union(*(frame.columns for frame in used.values()))))
    # in numpy: the simulations take some 10^4 contrasts, and pandas' aligned arithmetic was most of it
    y = sum(weights[c] * frame.loc[seeds].reindex(columns=columns).to_numpy(float) for c, frame in used.items())
    return total_interval(pd.DataFrame(y, index=seeds, columns=columns), confidence)


def _contribution_row(tested: pd.DataFrame, columns: pd.Index) -> np.ndarray:
    """image_contributions of ``tested`` on ``columns`` (0 for images it did not test), scaled to
    a one-seed row whose image term is that of the contributions."""
    c = pd.Series(image_contributions(tested.to_numpy(float)), index=tested.columns)
    return c.reindex(columns, fill_value=0.0).to_numpy() * len(columns)


def mcnemar_exact(correct_a, correct_b) -> tuple[int, int, float]:
    """Exact McNemar test of two runs on the same images: (a right & b wrong, a wrong & b right,
    two-sided p of the binomial test of the discordant pairs at 1/2)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


# --- per-image scores of each metric -------------------------------------------------------------

ECE_BINS = 10


def _calibration_bins(probs: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin of each image, its confidence = top probability, its predicted class)."""
    conf = probs.max(axis=1)
    return np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1), conf, probs.argmax(axis=1)


def expected_calibration_error(labels, probs, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of (share of images) * |accuracy - confidence|."""
    labels, probs = np.asarray(labels), np.asarray(probs, float)
    which, conf, pred = _calibration_bins(probs, bins)
    gap = np.bincount(which, conf - (pred == labels), minlength=bins)
    return float(np.abs(gap).sum() / len(labels)) if len(labels) else math.nan


def _jackknife_scores(value: float, leave_one_out: np.ndarray) -> np.ndarray:
    """Per-image scores with mean ``value`` and variance / N = the jackknife variance: the
    jackknife pseudo-values N f - (N - 1) f_(-i), shifted to average f."""
    n = len(leave_one_out)
    pseudo = n * value - (n - 1) * leave_one_out
    return value + pseudo - pseudo.mean()


def _ece_scores(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    which, conf, pred = _calibration_bins(probs, ECE_BINS)
    gap_i = conf - (pred == labels)
    gap = np.bincount(which, gap_i, minlength=ECE_BINS)
    total, n = np.abs(gap).sum(), len(labels)
    loo = (total - np.abs(gap[which]) + np.abs(gap[which] - gap_i)) / (n - 1)
    return _jackknife_scores(total / n, loo)


def _auc_scores(labels: np.ndarray, probs: np.ndarray, classes: int) -> np.ndarray:
    """Macro one-vs-rest AUROC: exact leave-one-out values from the DeLong placements."""
    n = len(labels)
    loo, aucs = np.zeros(n), []
    for k in range(classes):
        pos, s = labels == k, probs[:, k]
        m, q = int(pos.sum()), int((~pos).sum())
        if m < 2 or q < 2:
            return np.full(n, np.nan)
        rank_all = stats.rankdata(s)
        placement = np.empty(n)
        # positives: share of negatives ranked below (ties 1/2); negatives: share of positives above
        placement[pos] = (rank_all[pos] - stats.rankdata(s[pos])) / q
        placement[~pos] = (m - (rank_all[~pos] - stats.rankdata(s[~pos]))) / m
        auc = placement[pos].mean()
        aucs.append(auc)
        loo += np.where(pos, (m * auc - placement) / (m - 1), (q * auc - placement) / (q - 1))
    return _jackknife_scores(float(np.mean(aucs)), loo / classes)




def image_scores(labels, probs, metric: str) -> np.ndarray:
    """Per-image scores whose mean over the test images is the run's ``metric``.

    accuracy: correctness. balanced_accuracy: correctness / (classes present * class share), a
    weighted mean. roc_auc_ovr (macro one-vs-rest AUROC) and ece (10 bins): jackknife
    pseudo-values, so their variance over images / N is the jackknife variance.
    """
    labels, probs = np.asarray(labels, int), np.asarray(probs, float)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    if metric == "accuracy":
        return correct
    if metric == "balanced_accuracy":
        present, counts = np.unique(labels, return_counts=True)
        share = dict(zip(present, counts / len(labels), strict=True))
        return correct / (len(present) * np.array([share[v] for v in labels]))
    if metric == "roc_auc_ovr":
        return _auc_scores(labels, probs, probs.shape[1])
    if metric == "ece":
        return _ece_scores(labels, probs)
    raise ValueError(f"no per-image scores for {metric!r}; known: {', '.join(IMAGE_METRICS)}")


# --- what more seeds or more images buy ----------------------------------------------------------

@dataclass(frozen=True)
class VarianceSplit:
    """Where the uncertainty of a configuration's mean comes from (units of the scores)."""

    seed_sd: float  # sd of the run metric over seeds
    test_sample_sd: float  # sd of one run's metric from its finite test set (binomial-like)
    run_sd: float  # both: one run on a new seed and a new test set
    se_seed: float  # of the mean over the seeds run
    se_image: float  # of the mean, from the test images
    n_seeds: int
    n_images: int

    @property
    def se_total(self) -> float:
        return math.hypot(self.se_seed, self.se_image)

    @property
    def dominant(self) -> str:
        return "seeds" if self.se_seed >= self.se_image else "test images"

    def se_with(self, seeds: float = 1.0, images: float = 1.0) -> float:
        """SE of the mean with ``seeds`` times the seeds and ``images`` times the test images."""
        return math.sqrt(self.se_seed**2 / seeds + self.se_image**2 / images)


def variance_split(scores: pd.DataFrame) -> VarianceSplit:
    """seed sd, test-sample sd and their total for one configuration's runs (see total_interval)."""
    tested = scores.dropna(axis=1, how="all")
    y = tested.to_numpy(float)
    means = np.nanmean(y, axis=1)
    per_run = np.nanvar(y, axis=1, ddof=1) / np.sum(np.isfinite(y), axis=1)
    seed_sd = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
    test_sd = float(np.sqrt(per_run.mean()))
    total = total_interval(tested)
    return VarianceSplit(seed_sd, test_sd, math.hypot(seed_sd, test_sd), total.se_seed,
                         total.se_image, len(means), y.shape[1])


def seeds_needed_with_floor(diff: float, seed_sd: float, se_image: float, n_images: int,
                            alpha: float = 0.05, power: float = 0.8, most: int = 100_000) -> float:
    """Seed pairs for (t_(1-alpha/2) + t_power) * SE(Δ) <= diff, SE^2 = seed_sd^2 / n + se_image^2
    with the test images fixed; df Welch-Satterthwaite. inf when the test-sample term alone is too
    large (no number of seeds reaches it), NaN without usable inputs or without any spread (both
    terms 0: runs that agree image for image leave nothing to plan with)."""
    if not (np.isfinite(seed_sd) and np.isfinite(se_image) and diff > 0) or seed_sd == se_image == 0:
        return math.nan
    if (special.ndtri(1 - alpha / 2) + special.ndtri(power)) * se_image >= diff:
        return math.inf
    n = np.arange(2, most + 1, dtype=float)
    v_seed, v_img = seed_sd**2 / n, np.full_like(n, se_image**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (v_seed + v_img) ** 2 / (v_seed**2 / (n - 1) + (v_img**2 / (n_images - 1) if se_image else 0))
    reach = (special.stdtrit(df, 1 - alpha / 2) + special.stdtrit(df, power)) * np.sqrt(v_seed + v_img) <= diff
    return float(n[np.argmax(reach)]) if reach.any() else math.inf


def images_needed(diff: float, seed_sd: float, n_seeds: int, se_image: float, n_images: int,
                  alpha: float = 0.05, power: float = 0.8) -> float:
    """Test images for (z_(1-alpha/2) + z_power) * SE(Δ) <= diff at ``n_seeds``, the image term
    scaling as 1 / N; inf when the seed term alone is too large; NaN without usable inputs or
    without any spread (as seeds_needed_with_floor)."""
    if not (np.isfinite(seed_sd) and np.isfinite(se_image) and diff > 0 and n_seeds > 0) or seed_sd == se_image == 0:
        return math.nan
    room = (diff / (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))) ** 2 - seed_sd**2 / n_seeds
    if room <= 0:
        return math.inf
    return float(math.ceil(n_images * se_image**2 / room))


def two_level_bootstrap(scores: Mapping[str, pd.DataFrame], n_resamples: int = 1000,
                        seed: int = 0) -> pd.DataFrame:
    """Replicate means (rows) of each configuration (columns): seeds resampled (the same seed
    draws for every configuration, so seed-matched pairs stay paired), then test images with one
    resample shared by every configuration and seed of the replicate. Fixed split only."""
    rng = np.random.default_rng(seed)
    seeds = sorted(set.intersection(*(set(f.index) for f in scores.values())))
    images = sorted(set.intersection(*(set(f.columns) for f in scores.values())))
    arrays = {k: f.loc[seeds, images].to_numpy(float) for k, f in scores.items()}
    out = {k: np.empty(n_resamples) for k in scores}
    for r in range(n_resamples):
        s = rng.integers(0, len(seeds), len(seeds))
        i = rng.integers(0, len(images), len(images))
        for k, y in arrays.items():
            out[k][r] = y[np.ix_(s, i)].mean()
    return pd.DataFrame(out)
