"""Simulated per-image correctness of a crossed design (cells x seeds x test images), known truth.

A probit model, chosen because its population cell mean is exact: image i of cell c on seed s is
right when  mu_c + u_cs - v_i + e > 0  with  u_cs ~ N(0, tau_c^2)  (the seed: initialisation and
order, drawn per cell and seed),  v_i ~ N(0, image_sd^2)  (difficulty, shared by every cell and seed:
a fixed split) and  e ~ N(0, 1)  (the Bernoulli draw). Over new seeds and new images the mean is
Phi(mu_c / sqrt(1 + tau_c^2 + image_sd^2)), so mu_c is set to make it ``cell_means[c]`` exactly,
and a contrast's population value is sum(w_c * cell_means[c]).

``seed_sd`` is in probability units (0.03 = 3 pp): the sd over seeds of a seed's accuracy on
infinitely many images, converted to tau_c by the delta method at the cell mean (exact as the sd
goes to 0, a few per cent off at the sds of real runs; the cell mean stays exact). ``image_sd`` is
on the probit scale: 2 makes most images nearly always right or nearly always wrong, as for real
classifiers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special


@dataclass(frozen=True)
class CrossedPopulation:
    """A crossed design with its test images drawn; ``draw`` gives any cell's runs, any seeds."""

    cell_means: Mapping[str, float]
    seed_sd: Mapping[str, float]  # probability units, per cell
    image_sd: float  # probit scale
    difficulty: np.ndarray  # v_i of this test set (one draw of N(0, image_sd^2) per image)

    def latent(self, cell: str) -> tuple[float, float]:
        """(mu_c, tau_c): the probit model's cell shift and seed sd for the cell's mean and seed sd."""
        # scipy.special's normal quantile and cdf: scipy.stats.norm's numbers without its per-call
        # argument handling (a simulation draws some 10^4 times)
        q = special.ndtri(self.cell_means[cell])
        scale = math.sqrt(1 + self.image_sd**2)
        density = math.exp(-q * q / 2) / math.sqrt(2 * math.pi)
        tau = self.seed_sd[cell] * scale / density  # d acc / d u = pdf(q) / scale
        return float(q * math.sqrt(scale**2 + tau**2)), float(tau)

    def draw(self, cell: str, first_seed: int, n: int, rng: np.random.Generator) -> pd.DataFrame:
        """Seeds first_seed .. first_seed + n - 1 of ``cell``: 0/1 correctness, seeds x image ids."""
        mu, tau = self.latent(cell)
        p = special.ndtr(mu + rng.normal(0.0, tau, (n, 1)) - self.difficulty[None, :])
        return pd.DataFrame((rng.random(p.shape) < p).astype(float),
                            index=pd.RangeIndex(first_seed, first_seed + n, name="seed"),
                            columns=pd.RangeIndex(len(self.difficulty), name="image"))


def crossed_population(cell_means: Mapping[str, float], images: int,
                       seed_sd: float | Mapping[str, float], image_sd: float,
                       rng: np.random.Generator) -> CrossedPopulation:
    """Draw a test set of ``images`` difficulties for the cells (one seed sd, or one per cell)."""
    sds = {c: seed_sd[c] for c in cell_means} if isinstance(seed_sd, Mapping) else dict.fromkeys(
        cell_means, float(seed_sd))
    return CrossedPopulation(dict(cell_means), sds, float(image_sd),
                             rng.normal(0.0, image_sd, images))


def crossed_scores(cell_means: Mapping[str, float], seeds: int | Mapping[str, int], images: int,
                   seed_sd: float | Mapping[str, float], image_sd: float,
                   rng: np.random.Generator, first_seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every cell's runs on one new test set: cell -> seeds x images 0/1 frame. For more seeds of
    the same cells later, keep ``crossed_population``'s result and call its ``draw``."""
    population = crossed_population(cell_means, images, seed_sd, image_sd, rng)
    counts = seeds if isinstance(seeds, Mapping) else dict.fromkeys(cell_means, seeds)
    return {c: population.draw(c, first_seed, counts[c], rng) for c in cell_means}
