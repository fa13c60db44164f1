"""The claims an ablation makes (each Δ against the baseline, each main effect of a crossed design)
and their verdicts over the looks of a sequential design. Pure: cells in, verdicts out.

One place for both users: the adaptive sweep judges a round with ``verdicts``, and the report's
first table and the parent run's tags show the same ``verdicts`` of the same runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pandas as pd

from xray_ablate.stats.intervals import cell_label, contrast_weights
from xray_ablate.stats.verdicts import BETTER, UNRESOLVED, WORSE, Claim, SequentialDesign, Verdict, judge


def ablation_claims(levels: pd.DataFrame, baseline: str) -> list[Claim]:
    """``levels``: one row per cell (index: its label), one column per varied factor (the level).

    Every other cell minus the baseline, named by ``cell_labels``; and when two or more factors are
    crossed (every combination present once), each factor's main effect of each level against the
    baseline's level, averaged over the other factors (stats.intervals.contrast_weights).
    """
    factors = list(levels.columns)
    base = levels.loc[baseline]
    labels = cell_labels(levels, baseline)
    claims = [Claim(f"{labels[cell]} − baseline", {cell: 1.0, baseline: -1.0})
              for cell in levels.index if cell != baseline]
    options = {f: sorted(levels[f].astype(str).unique()) for f in factors}
    crossed = len(factors) >= 2 and len(levels) == math.prod(len(v) for v in options.values()) and \
        not levels.duplicated().any()
    if not crossed:
        return claims
    by_label = {cell_label([str(row[f]) for f in factors]): cell for cell, row in levels.iterrows()}
    for factor in factors:
        for level in options[factor]:
            if level == str(base[factor]):
                continue
            weights = contrast_weights(factors, options, {factor: (level, str(base[factor]))})
            claims.append(Claim(f"{factor}: {level} − {base[factor]} (main effect)",
                                {by_label[label]: w for label, w in weights.items() if w}))
    return claims


def cell_labels(levels: pd.DataFrame, baseline: str) -> dict[str, str]:
    """Each cell's name: the factor levels it changes from the baseline ("dataset=raw"; "baseline
    levels" where it changes none), with its key's first 8 characters where two cells share one
    (a sweep of a setting that is no factor, e.g. trainer.lr): the report's run table labels them
    so too, and claims by one name would take each other's verdicts."""
    base = levels.loc[baseline]
    return unique_labels({cell: "baseline" if cell == baseline else
                          ", ".join(f"{f}={row[f]}" for f in row.index if row[f] != base[f]) or "baseline levels"
                          for cell, row in levels.iterrows()})


def unique_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` (cell key -> label), each label that two cells share suffixed with its cell's key
    ("[5dbf8eef]"), as the report's run table does."""
    shared = pd.Series(labels, dtype=object).duplicated(keep=False)
    return {cell: f"{label} [{cell[:8]}]" if shared[cell] else label for cell, label in labels.items()}


def verdicts(claims: Sequence[Claim], cells: Mapping[str, pd.DataFrame], design: SequentialDesign,
             higher_is_better: bool = True) -> list[Verdict]:
    """Each claim judged at every look its common seeds reach, in order, on the first seeds of that
    look; its verdict is that of the first look that resolves it (a group-sequential design stops
    a claim there), else of the last look reached. For a metric where lower is better (a loss,
    ECE) a positive difference is "worse"."""
    judged = [_first_resolved(claim, cells, design) for claim in claims]
    if higher_is_better:
        return judged
    flip = {BETTER: WORSE, WORSE: BETTER}
    return [replace(v, verdict=flip.get(v.verdict, v.verdict)) for v in judged]


def _first_resolved(claim: Claim, cells: Mapping[str, pd.DataFrame], design: SequentialDesign) -> Verdict:
    frames = {c: cells[c] for c in claim.weights}
    common = sorted(set.intersection(*(set(f.index) for f in frames.values())))
    reached = [k for k, n in enumerate(design.looks) if n <= len(common)] or [0]
    verdict = None
    for look in reached:
        seeds = common[:design.looks[look]]
        verdict = judge(claim, {c: f.loc[f.index.isin(seeds)] for c, f in frames.items()}, design, look)
        if verdict.verdict != UNRESOLVED:
            break
    return verdict


def verdict_line(v: Verdict) -> str:
    """One line per verdict, for logs and tags: 'better: +13.2 pp [8.4, 17.9] (98.3 % CI, 5 seeds)'."""
    more = ""
    if v.verdict == UNRESOLVED:
        more = ("; more seeds cannot resolve it (the test images limit it)" if math.isinf(v.more_seeds)
                else f"; about {v.more_seeds:.0f} more seeds per configuration for even odds to resolve it"
                if math.isfinite(v.more_seeds) else "")
    return (f"{v.verdict}: {100 * v.estimate:+z.1f} pp [{100 * v.low:+z.1f}, {100 * v.high:+z.1f}] "
            f"({100 * v.confidence:.1f} % CI over seeds and test images, {v.seeds} seeds){more}")
