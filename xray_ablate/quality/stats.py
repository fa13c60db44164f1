"""Do BRISQUE scores differ between classes? Kruskal-Wallis, then pairwise Mann-Whitney U (Holm)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from xray_ablate.stats.intervals import holm

PAIR_COLUMNS = ["a", "b", "n_a", "n_b", "u", "p", "p_holm", "reject", "rank_biserial"]


@dataclass
class ClassComparison:
    kruskal_h: float
    kruskal_p: float
    df: int  # groups - 1
    epsilon_sq: float  # H / (n - 1): share of rank variance explained by class, 0..1
    n: int  # scores compared
    pairs: pd.DataFrame  # PAIR_COLUMNS, one row per pair of classes
    alpha: float


def compare_classes(groups: dict[str, np.ndarray], alpha: float = 0.05) -> ClassComparison:
    """Compare the score distributions of ``groups`` (class -> scores; NaN ignored).

    Pairs use two-sided Mann-Whitney U tests with Holm's step-down correction over all pairs.
    The effect size of a pair is the rank-biserial correlation r = 2U/(n_a n_b) - 1, which
    equals Cliff's delta P(a > b) - P(a < b): r > 0 means class a scores higher (worse quality).
    Classes without scores are left out; with fewer than two classes the statistics are NaN.
    """
    clean = {}
    for cls, values in groups.items():
        values = np.asarray(values, float)
        if np.isfinite(values).any():
            clean[cls] = values[np.isfinite(values)]
    n = sum(v.size for v in clean.values())
    h = p = eps = np.nan
    if len(clean) >= 2 and np.unique(np.concatenate(list(clean.values()))).size > 1:
        h, p = stats.kruskal(*clean.values())
        eps = h / (n - 1)
    rows = []
    for a, b in combinations(clean, 2):
        u, pair_p = stats.mannwhitneyu(clean[a], clean[b], alternative="two-sided")
        size = clean[a].size * clean[b].size
        rows.append({"a": a, "b": b, "n_a": clean[a].size, "n_b": clean[b].size, "u": float(u),
                     "p": float(pair_p), "rank_biserial": 2 * u / size - 1})
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    if rows:
        pairs["p_holm"] = holm(pairs["p"].to_numpy())
        pairs["reject"] = pairs["p_holm"] <= alpha  # Holm's step-down rejects where its adjusted p <= alpha
    return ClassComparison(kruskal_h=float(h), kruskal_p=float(p), df=len(clean) - 1,
                           epsilon_sq=float(eps), n=n, pairs=pairs, alpha=alpha)
