"""What a dataset holds after ingest and splitting: counts per class, reason, split, patient,
and per attribute its class x level counts and Cramér's V with the class (V >= 0.5: a confound)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats.contingency import association

from xray_ablate.config.choices import CLASSES
from xray_ablate.data.labels import EXCLUSION_REASONS
from xray_ablate.data.prepare import PreparedData
from xray_ablate.data.splits import SPLITS

CONFOUND_V = 0.5  # Cramér's V between an attribute and the class from which it counts as a confound


def summarize(data: PreparedData) -> dict:
    table = data.table
    by_split = {s: table[table["split"] == s] for s in SPLITS}
    patients = {s: set(part["patient_id"]) for s, part in by_split.items()}
    shared = (patients["train"] & patients["val"]) | (patients["train"] & patients["test"]) \
        | (patients["val"] & patients["test"])
    reasons = data.excluded["reason"].value_counts()
    return {
        "classes": {c: int((table["cls"] == c).sum()) for c in CLASSES},
        "excluded": {r: int(reasons.get(r, 0)) for r in EXCLUSION_REASONS if reasons.get(r, 0)},
        "splits": {s: {c: int((part["cls"] == c).sum()) for c in CLASSES} for s, part in by_split.items()},
        "patients": {s: len(p) for s, p in patients.items()},
        "shared_patients": len(shared),
        "manifest_hash": data.manifest_hash,
        "fingerprint": data.fingerprint,
        "layout": data.layout,
        "unknown_tags": data.unknown_tags,
        "patient_fallbacks": data.patient_fallbacks,
        "attributes": {name: attribute_summary(table, name, origin)
                       for name, origin in data.metadata.attributes.items()},
        "metadata": {k: v for k, v in data.metadata.as_dict().items() if k != "attributes"},
    }


def cramers_v(observed: np.ndarray) -> float | None:
    """Cramér's V of a contingency table (no bias correction; empty rows and columns dropped);
    None with fewer than two rows or columns left."""
    observed = np.asarray(observed)
    observed = observed[observed.sum(axis=1) > 0][:, observed.sum(axis=0) > 0]
    if min(observed.shape) < 2:
        return None
    return float(association(observed, method="cramer"))


def attribute_summary(table: pd.DataFrame, name: str, origin: str) -> dict:
    """Class x level counts over all images and per split, and the association with the class."""
    levels = sorted(table[name].unique())
    counts = {part: {c: dict.fromkeys(levels, 0) for c in CLASSES} for part in ("all", *SPLITS)}
    for (split, cls, level), n in table.groupby(["split", "cls", name]).size().items():
        counts[split][cls][level] += int(n)
        counts["all"][cls][level] += int(n)
    v = cramers_v(np.array([[counts["all"][c][lv] for lv in levels] for c in CLASSES]))
    return {"origin": origin, "levels": levels, "counts": counts, "cramers_v": v,
            "confound": v is not None and v >= CONFOUND_V}


def format_summary(summary: dict) -> str:
    header = (f"dataset fingerprint {summary['fingerprint']} ({summary['layout']}), "
              f"split manifest {summary['manifest_hash']}")
    lines = [header, "", "images per class:"]
    lines += [f"  {c:<10} {n:>6}" for c, n in summary["classes"].items()]
    lines.append(f"  {'total':<10} {sum(summary['classes'].values()):>6}")
    lines += ["", "excluded:"]
    lines += [f"  {r:<26} {n:>6}" for r, n in summary["excluded"].items()] or ["  none"]
    lines += ["", f"  {'split':<6}" + "".join(f"{c:>11}" for c in CLASSES) + f"{'patients':>10}"]
    for split, counts in summary["splits"].items():
        lines.append(f"  {split:<6}" + "".join(f"{counts[c]:>11}" for c in CLASSES)
                     + f"{summary['patients'][split]:>10}")
    lines.append(f"\npatients in more than one split: {summary['shared_patients']}")
    if summary["unknown_tags"]:
        tags = ", ".join(f"{t} ({n})" for t, n in sorted(summary["unknown_tags"].items()))
        lines.append(f"unknown tags (kept, not used for labels): {tags}")
    if summary["patient_fallbacks"]:
        lines.append(f"{summary['patient_fallbacks']} images without a PatientID tag count as "
                     "their own patient")
    lines += _format_metadata(summary["metadata"])
    attributes = sorted(summary["attributes"].items(), key=lambda kv: -(kv[1]["cramers_v"] or 0))
    for name, attr in attributes:
        lines += [""] + _format_attribute(name, attr)
    return "\n".join(lines)


def _format_metadata(meta: dict) -> list[str]:
    lines = []
    if meta["csv"]:
        lines += ["", f"metadata {meta['csv']} (key column {meta['key']}): {meta['rows']} rows, "
                      f"{meta['rows_matched']} matched, {meta['rows_of_excluded']} of excluded images, "
                      f"{meta['rows_unmatched']} naming no image"
                      + (f" (e.g. {', '.join(meta['rows_unmatched_examples'])})"
                         if meta["rows_unmatched"] else "")]
        if meta["images_unmatched"]:
            lines.append(f"{meta['images_unmatched']} images have no metadata row (e.g. "
                         f"{', '.join(meta['images_unmatched_examples'])}); their values are missing")
    if meta["skipped"]:
        lines.append("not used as attributes: "
                     + "; ".join(f"{n}: {why}" for n, why in meta["skipped"].items()))
    return lines


def _format_attribute(name: str, attr: dict) -> list[str]:
    v = attr["cramers_v"]
    verdict = "n/a" if v is None else f"{v:.2f}" + (f"  CONFOUND (V >= {CONFOUND_V})" if attr["confound"] else "")
    lines = [f"attribute {name} ({attr['origin']}): Cramér's V with the class {verdict}",
             "  cells: all = train/val/test"]
    width = max(len(lv) for lv in attr["levels"]) + 2
    lines.append(f"  {'':<{width}}" + "".join(f"{c:>16}" for c in CLASSES))
    for lv in attr["levels"]:
        cells = [f"{attr['counts']['all'][c][lv]} = " + "/".join(str(attr["counts"][s][c][lv]) for s in SPLITS)
                 for c in CLASSES]
        lines.append(f"  {lv:<{width}}" + "".join(f"{cell:>16}" for cell in cells))
    return lines
