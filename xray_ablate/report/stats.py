"""The report's statistics: pure functions over numbers, thin wrappers of scipy and statsmodels.

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
from scipy import stats
from statsmodels.formula.api import ols
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

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
    if np.ptp(a - b) == 0:  # identical differences: no spread, the t statistic is undefined
        return Comparison(delta, delta, delta, math.nan, "paired t", len(a), len(b), len(a),
                          len(a) - 1)
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(confidence)
    return Comparison(delta, float(ci.low), float(ci.high), float(res.pvalue), "paired t",
                      len(a), len(b), len(a), float(res.df))


def welch_comparison(a, b, confidence: float = 0.95) -> Comparison:
    """Welch's unequal-variance t-test (scipy.stats.ttest_ind(equal_var=False)) and its interval."""
    a, b = _values(a), _values(b)
    delta = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Comparison(delta, *NAN_PAIR, math.nan, "Welch t", len(a), len(b), 0, math.nan)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
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
    """Holm-adjusted p-values (statsmodels multipletests); NaN entries stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
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

def _cell_label(row: Sequence[str]) -> str:
    return " | ".join(map(str, row))


def _cell_means_fit(data: pd.DataFrame, factors: Sequence[str], response: str):
    """OLS of the cell-means model (one indicator per factor combination, no intercept)."""
    cells = data[list(factors)].astype(str).apply(_cell_label, axis=1)
    exog = pd.get_dummies(cells).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no residual df: scale is NaN
        return OLS(data[response].astype(float).to_numpy(), exog).fit()


def _contrast_rows(factors: Sequence[str], levels: Mapping[str, Sequence[str]],
                   signs: Mapping[str, tuple[str, str]], names: Sequence[str]) -> np.ndarray:
    """Weights over cells: +-1 per factor in ``signs`` (level, reference), averaged over the rest."""
    others = [f for f in factors if f not in signs]
    combos = list(itertools.product(*[levels[f] for f in others]))
    weights = dict.fromkeys(names, 0.0)
    for combo in combos:
        fixed = dict(zip(others, combo, strict=True))
        for choice in itertools.product(*[(0, 1) for _ in signs]):
            level = dict(fixed)
            sign = 1.0
            for (factor, (hi, lo)), pick in zip(signs.items(), choice, strict=True):
                level[factor] = hi if pick == 0 else lo
                sign *= 1.0 if pick == 0 else -1.0
            label = _cell_label([level[f] for f in factors])
            weights[label] += sign / len(combos)
    return np.array([[weights[n] for n in names]])


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
