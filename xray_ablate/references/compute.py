"""The reference figures of one prepared dataset, computed once and cached on disk.

Key: the image cache key (dataset content, ingest and preprocessing options), the split
manifest hash, the requested attributes' values per image, and the pixel model's settings.
The cache is ``<cache_dir>/references/<key>.json``, written atomically under a file lock, so
the jobs of a sweep compute it once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xray_ablate.data import cache
from xray_ablate.data.atomic import write_text_atomic
from xray_ablate.data.metadata import attributes_digest, require_attributes
from xray_ablate.data.prepare import PreparedData
from xray_ablate.data.splits import SPLITS
from xray_ablate.references.baselines import (
    Probe,
    Reference,
    attribute_rule,
    majority_class,
    pixel_reference,
    source_probe,
)
from xray_ablate.references.intervals import Proportion
from xray_ablate.references.pixels import C_GRID, PIXELS, downscale

VERSION = 2  # bump when a figure would come out different for the same data


@dataclass
class References:
    """The reference rows and probes of one dataset variant (``variant``: masked, raw, ...)."""

    key: str
    rows: list[Reference]
    probes: list[Probe]
    variant: str = ""
    fitted_now: bool = False  # computed by this call (False: read from the cache)
    skipped_probes: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "key": self.key, "variant": self.variant,
            "rows": [{"name": r.name, "attribute": r.attribute, "detail": r.detail, **r.test.as_dict()}
                     for r in self.rows],
            "probes": [{"attribute": p.attribute, "detail": p.detail, **p.test.as_dict(),
                        "majority": p.majority.as_dict()} for p in self.probes],
            "skipped_probes": self.skipped_probes,
        }

    @classmethod
    def from_dict(cls, doc: dict, variant: str = "") -> References:
        rows = [Reference(r["name"], Proportion(r["k"], r["n"]), r["attribute"], r["detail"])
                for r in doc["rows"]]
        probes = [Probe(p["attribute"], Proportion(p["k"], p["n"]),
                        Proportion(p["majority"]["k"], p["majority"]["n"]), variant, p["detail"])
                  for p in doc["probes"]]
        return cls(doc["key"], rows, probes, variant, skipped_probes=doc.get("skipped_probes", {}))


def references_key(data: PreparedData, attributes: list[str]) -> str:
    payload = {"images": data.cache_key, "split": data.manifest_hash, "attributes": sorted(attributes),
               "values": attributes_digest(data.table, sorted(attributes)), "pixels": PIXELS,
               "grid": C_GRID, "v": VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def compute_references(data: PreparedData, attributes: list[str], cache_dir: Path,
                       variant: str = "") -> References:
    """Reference rows and probes for ``data`` (cached); ``attributes``: the subgroup attributes."""
    require_attributes(attributes, data.metadata)
    key = references_key(data, attributes)
    path = Path(cache_dir) / "references" / f"{key}.json"
    with cache.lock(cache_dir, f"references-{key}"):
        if path.is_file():
            return References.from_dict(json.loads(path.read_text()), variant)
        refs = _compute(data, attributes, key)
        write_text_atomic(path, json.dumps(refs.as_dict(), indent=1))
    refs.variant, refs.fitted_now = variant, True
    for probe in refs.probes:
        probe.variant = variant
    return refs


def _compute(data: PreparedData, attributes: list[str], key: str) -> References:
    cls = split_arrays(data, "cls")
    x = split_pixels(data)
    rows = [majority_class(cls["train"], cls["test"]), pixel_reference(x, cls)]
    probes, skipped = [], {}
    for name in attributes:
        levels = split_arrays(data, name)
        rows.append(attribute_rule(name, cls["train"], levels["train"], cls["test"], levels["test"]))
        probe = source_probe(name, x, levels)
        if probe is None:
            skipped[name] = "one level in the training split"
        else:
            probes.append(probe)
    return References(key, rows, probes, skipped_probes=skipped)


def pixel_probe(data: PreparedData, attribute: str) -> Probe | None:
    """The pixel model of the references predicting ``attribute`` (None: one training level)."""
    return source_probe(attribute, split_pixels(data), split_arrays(data, attribute))


def split_pixels(data: PreparedData) -> dict[str, np.ndarray]:
    """The images, downscaled for the pixel model, cut into train/val/test."""
    return {s: downscale(data.images[data.split_indices(s)]) for s in SPLITS}


def split_arrays(data: PreparedData, column: str) -> dict[str, np.ndarray]:
    """A table column cut into train/val/test."""
    return {s: data.table[column].to_numpy()[data.split_indices(s)] for s in SPLITS}
