"""The label rules: the one place that maps Darwin tags to classes (the class list itself is
config.choices.CLASSES, so the config schema can check per-class settings without the data code)."""

from __future__ import annotations

import re
from dataclasses import dataclass

COVID_TAG = "COVID-19"
VIRAL_TAG = "Viral Pneumonia"
BACTERIAL_TAG = "Bacterial Pneumonia"
HEALTHY_TAG = "No Pneumonia (healthy)"
CLASS_TAGS = (COVID_TAG, VIRAL_TAG, BACTERIAL_TAG, HEALTHY_TAG)

# ImageFolder layouts name classes by folder; these spellings are accepted (case-insensitive).
FOLDER_ALIASES = {
    "bacterial": "bacterial", "bacteria": "bacterial", "bacterial_pneumonia": "bacterial",
    "viral": "viral", "virus": "viral", "viral_pneumonia": "viral",
    "covid": "covid", "covid-19": "covid", "covid19": "covid",
    "healthy": "healthy", "normal": "healthy", "no_pneumonia": "healthy",
}

# Exclusion reasons, in the order the summary prints them. README "Bad input" explains each.
EXCLUSION_REASONS: tuple[str, ...] = (
    "not_json", "json_too_large", "json_too_deep", "missing_fields", "path_escapes_root",
    "no_annotation", "image_missing", "image_unreadable", "image_too_large",
    "size_mismatch", "duplicate_id", "duplicate_image", "fungal", "lipoid", "no_class_tag", "conflicting_classes",
    "ct", "lateral", "non_frontal_view", "polygon_non_finite", "polygon_too_few_points",
    "polygon_out_of_bounds", "polygon_self_intersecting", "no_lung_polygon", "empty_mask",
    "symlink_loop", "unexpected_error",
)

# Tags that carry metadata rather than a diagnosis (V7's COVID-19 export uses all of these).
_METADATA_TAG = re.compile(
    r"^(PatientID|Age|Sex|View|location|ICU_admission|In_ICU_scan|Intubation|Intubation_present|"
    r"Extubated|Survival|Needed_supplemental_O2|Leukocyte_count|Lymphocyte_count|"
    r"Lymphocyte_count_on_admission|Neutrophil_count|Temperature|pO2_saturation|X-ray|CT|"
    r"Went_ICU|RT_PCR_positive|Offset|Date|Modality|"
    r"Marker)(\b|[:/_ ].*)?$"  # Marker: the synthetic phantoms' own (data/synthetic.py)
)
FRONTAL_VIEWS = ("PA", "AP", "AP_Supine", "AP Supine", "AP_Erect", "AP Erect")


@dataclass(frozen=True)
class Label:
    """The outcome of the label rules for one image: a class, or an exclusion reason."""

    cls: str | None
    reason: str | None = None
    detail: str = ""


def label_from_tags(tags: list[str]) -> Label:
    """Apply the study's label rules to an image's tag names.

    COVID-19 images also carry ``Viral Pneumonia``; COVID-19 wins over it. Fungal and lipoid
    pneumonia, CT and non-frontal images are excluded; several different classes conflict.
    """
    lowered = [t.lower() for t in tags]
    if any("fungal" in t or "pneumocystis" in t for t in lowered):
        return Label(None, "fungal", "fungal pneumonia tag")
    if any("lipoid" in t for t in lowered):
        return Label(None, "lipoid", "lipoid pneumonia tag")
    if "CT" in tags:
        return Label(None, "ct", "CT tag")
    views = [t.split("/", 1)[1] for t in tags if t.startswith("View/")]
    for view in views:
        if view.lower().startswith("l"):
            return Label(None, "lateral", f"view {view}")
        if view not in FRONTAL_VIEWS:
            return Label(None, "non_frontal_view", f"view {view}")

    found = set()
    if COVID_TAG in tags:
        found.add("covid")
    elif VIRAL_TAG in tags:
        found.add("viral")
    if BACTERIAL_TAG in tags:
        found.add("bacterial")
    if HEALTHY_TAG in tags:
        found.add("healthy")
    if not found:
        return Label(None, "no_class_tag", "none of: " + ", ".join(CLASS_TAGS))
    if len(found) > 1:
        return Label(None, "conflicting_classes", " + ".join(sorted(found)))
    return Label(found.pop())


def unknown_tags(tags: list[str]) -> list[str]:
    """Tags that are neither a class tag, a known exclusion, nor V7 metadata."""
    return [
        t for t in tags
        if t not in CLASS_TAGS and not _METADATA_TAG.match(t)
        and not any(k in t.lower() for k in ("fungal", "pneumocystis", "lipoid"))
    ]


def view_of(tags: list[str]) -> str:
    views = [t.split("/", 1)[1] for t in tags if t.startswith("View/")]
    return views[0] if views else ""


def modality_of(tags: list[str]) -> str:
    return "CT" if "CT" in tags else "X-ray"


def patient_of(tags: list[str]) -> str | None:
    for t in tags:
        if t.startswith("PatientID:"):
            value = t.split(":", 1)[1].strip()
            if value:
                return value
    return None
