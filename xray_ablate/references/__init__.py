"""Per-dataset reference figures: trivial baselines, the source probe, per-subgroup accuracy.

``compute_references(data, attributes, cache_dir, variant)`` gives, once per (dataset, split,
preprocessing, attribute values) and cached on disk: the majority class, a logistic regression
on downscaled pixels, the attribute-only rule per attribute, and the source probe (the pixel
model predicting the attribute). ``probe_sentence`` words the probe for a report;
``subgroup_scores`` is a run's accuracy per attribute level.
"""

from xray_ablate.references.baselines import Probe, Reference, probe_sentence
from xray_ablate.references.compute import References, compute_references
from xray_ablate.references.intervals import Proportion, wilson
from xray_ablate.references.subgroups import MIN_SUBGROUP_N, SubgroupScore, accuracy_gap, subgroup_scores

__all__ = [
    "MIN_SUBGROUP_N", "Probe", "Proportion", "Reference", "References", "SubgroupScore", "accuracy_gap",
    "compute_references", "probe_sentence", "subgroup_scores", "wilson",
]
