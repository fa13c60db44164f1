"""What a dataset holds after ingest and splitting: counts per class, reason, split, patient."""

from __future__ import annotations

from xray_ablate.data.labels import CLASSES, EXCLUSION_REASONS
from xray_ablate.data.prepare import PreparedData
from xray_ablate.data.splits import SPLITS


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
    }


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
    return "\n".join(lines)
