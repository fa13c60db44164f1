"""Per-dataset evidence of a sweep: the reference figures of each dataset it trains on, raw and
masked, computed (or read from the cache) once at the start and logged to the parent run."""

from __future__ import annotations

import dataclasses

from xray_ablate.config.schema import Config
from xray_ablate.data.prepare import DataConfig, prepare
from xray_ablate.data.settings import data_config
from xray_ablate.references import References, compute_references
from xray_ablate.tracking import schema
from xray_ablate.tracking.recorder import Recorder


def dataset_references(configs: list[Config]) -> dict[str, References]:
    """Artifact name -> the references of every distinct (dataset, split, image size, attributes)
    of the sweep, raw and (with lung polygons) masked; a second dataset of one variant is told
    apart by its references key in the artifact name, and in the rows' names by its image size
    ('masked-64px': a sweep over image_size) or, at one size, its key."""
    seen, out, sizes = set(), {}, {}
    for config in configs:
        attributes = list(config.eval.subgroups)
        raw_cfg = _variant(data_config(config), "raw")
        if (raw_cfg, tuple(attributes)) in seen:
            continue
        seen.add((raw_cfg, tuple(attributes)))
        raw = prepare(raw_cfg)
        variants = {"raw": raw, "masked": prepare(_variant(raw_cfg, "masked")) if raw.lungs is not None else None}
        for mode, data in variants.items():
            if data is None:
                continue
            refs = compute_references(data, attributes, raw_cfg.cache_dir, variant=mode)
            taken = any(r.variant == mode for r in out.values())
            out[f"{schema.REFERENCES_DIR}/{mode}-{refs.key}.json" if taken
                else f"{schema.REFERENCES_DIR}/{mode}.json"] = refs
            sizes[refs.key] = raw_cfg.preprocess.image_size
    for refs in out.values():  # 'pixel logistic regression, masked' twice, with other numbers: whose?
        mode = refs.variant
        alike = [sizes[r.key] for r in out.values() if r.variant.split("-")[0] == mode]
        if len(alike) > 1:
            refs.variant = f"{mode}-{sizes[refs.key]}px" if alike.count(sizes[refs.key]) == 1 else f"{mode}-{refs.key}"
            for probe in refs.probes:
                probe.variant = refs.variant
    return out


def record_references(recorder: Recorder, references: dict[str, References]) -> None:
    for artifact, refs in references.items():
        recorder.json(refs.as_dict(), artifact)


def _variant(cfg: DataConfig, mode: str) -> DataConfig:
    return dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, mode=mode))
