"""Read one V7 Darwin JSON file (format 1.0 or 2.0) into a format-independent record.

Darwin 1.0 (the public COVID-19 export): ``image`` holds ``filename``, ``width``, ``height``
(and an optional folder ``path``); shapes are ``polygon.path`` (one ring) or
``complex_polygon.path`` (a list of rings). Darwin 2.0 (current darwin-py): ``version: "2.0"``,
``item`` holds ``name``, ``path`` and ``slots`` (the first slot gives ``width``/``height``);
shapes are ``polygon.paths`` (a list of rings). Tags are annotations with a ``tag`` key in both.
Rings of one shape combine by the even-odd rule, so inner rings are holes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Ring = np.ndarray  # (k, 2) float64 array of x, y in pixel coordinates
Shape = list  # list[Ring]; rings combine by the even-odd rule

LUNG = "lung"
IGNORE = "ignore"


class DarwinFormatError(ValueError):
    """The file is not a Darwin JSON we can read; ``reason`` is an exclusion reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class DarwinImage:
    filename: str
    folder: str
    width: int
    height: int
    tags: list[str] = field(default_factory=list)
    lungs: list[Shape] = field(default_factory=list)
    ignores: list[Shape] = field(default_factory=list)
    original_filename: str = ""


# One image's annotations are kilobytes (the largest V7 COVID-19 JSON: ~60 KB); a file above
# this is not an annotation file and is not read into memory.
MAX_JSON_BYTES = 50 * 2**20


def read_darwin(path: Path) -> DarwinImage:
    size = Path(path).stat().st_size
    if size > MAX_JSON_BYTES:
        raise DarwinFormatError("json_too_large", f"{size:,} bytes, more than the limit of "
                                                  f"{MAX_JSON_BYTES:,} for an annotation file")
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DarwinFormatError("not_json", f"not valid JSON ({err})") from None
    except RecursionError:
        raise DarwinFormatError("json_too_deep", "nested deeper than Python's JSON parser allows") from None
    if not isinstance(doc, dict):
        raise DarwinFormatError("not_json", "top level is not a JSON object")
    if str(doc.get("version", "1.0")).startswith("2"):
        image = _header_v2(doc)
    else:
        image = _header_v1(doc)
    annotations = doc.get("annotations")
    if not isinstance(annotations, list):
        raise DarwinFormatError("missing_fields", "no 'annotations' list")
    for ann in annotations:
        if not isinstance(ann, dict) or "name" not in ann:
            raise DarwinFormatError("missing_fields", "an annotation has no 'name'")
        name = str(ann["name"])
        if "tag" in ann:
            image.tags.append(name)
            continue
        kind = name.strip().lower()
        rings = _rings(ann)
        if rings is None and kind == IGNORE and "bounding_box" in ann:
            rings = _box(ann)  # a region to leave out, drawn as a box: the masked image drops it too
        if rings is None:
            continue  # other shapes (keypoints, a box around a lung, ...): not used
        if kind == LUNG:
            image.lungs.append(rings)
        elif kind == IGNORE:
            image.ignores.append(rings)
    return image


def _header_v1(doc: dict) -> DarwinImage:
    img = doc.get("image")
    if not isinstance(img, dict):
        raise DarwinFormatError("missing_fields", "no 'image' object (Darwin 1.0)")
    missing = [k for k in ("filename", "width", "height") if img.get(k) in (None, "")]
    if missing:
        raise DarwinFormatError("missing_fields", "image." + ", image.".join(missing) + " missing")
    return DarwinImage(
        filename=str(img["filename"]), folder=str(img.get("path") or "/"),
        width=_int(img, "width"), height=_int(img, "height"),
        original_filename=str(img.get("original_filename") or ""),
    )


def _header_v2(doc: dict) -> DarwinImage:
    item = doc.get("item")
    if not isinstance(item, dict) or not item.get("name"):
        raise DarwinFormatError("missing_fields", "no 'item.name' (Darwin 2.0)")
    slots = item.get("slots")
    if not isinstance(slots, list) or not slots or not isinstance(slots[0], dict):
        raise DarwinFormatError("missing_fields", "no 'item.slots' (Darwin 2.0)")
    slot = slots[0]
    missing = [k for k in ("width", "height") if slot.get(k) in (None, "")]
    if missing:
        raise DarwinFormatError("missing_fields", "item.slots[0]." + ", ".join(missing) + " missing")
    files = slot.get("source_files") or [{}]
    return DarwinImage(
        filename=str(item["name"]), folder=str(item.get("path") or "/"),
        width=_int(slot, "width"), height=_int(slot, "height"),
        original_filename=str(files[0].get("file_name") or ""),
    )


def _int(obj: dict, key: str) -> int:
    try:
        return int(obj[key])
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
        raise DarwinFormatError("missing_fields", f"{key} is not a number: {obj[key]!r}") from None


def _box(ann: dict) -> Shape:
    """A bounding box {x, y, w, h} as a one-ring shape."""
    box = ann["bounding_box"] if isinstance(ann["bounding_box"], dict) else {}
    try:
        x, y, w, h = (float(box[k]) for k in ("x", "y", "w", "h"))
    except (TypeError, KeyError, ValueError):
        raise DarwinFormatError("missing_fields",
                                f"'{ann['name']}' bounding box lacks a numeric x, y, w or h") from None
    if not np.isfinite([x, y, w, h]).all():
        raise DarwinFormatError("polygon_non_finite", f"'{ann['name']}' bounding box has a NaN or infinite value")
    return [np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)]


def _rings(ann: dict) -> Shape | None:
    if "polygon" in ann:
        poly = ann["polygon"] or {}
        if "paths" in poly:  # 2.0
            paths = poly["paths"]
        else:  # 1.0
            paths = [poly.get("path")]
    elif "complex_polygon" in ann:  # 1.0 only
        paths = (ann["complex_polygon"] or {}).get("path")
    else:
        return None
    if not isinstance(paths, list) or not paths:
        raise DarwinFormatError("missing_fields", f"'{ann['name']}' polygon has no path")
    try:
        rings = [np.array([[float(p["x"]), float(p["y"])] for p in path], dtype=np.float64)
                 .reshape(-1, 2) for path in paths]
    except (TypeError, KeyError, ValueError):
        raise DarwinFormatError(
            "missing_fields", f"'{ann['name']}' polygon has a point without numeric x/y"
        ) from None
    if not all(np.isfinite(ring).all() for ring in rings):  # Python's JSON reads NaN, Infinity
        raise DarwinFormatError("polygon_non_finite", f"'{ann['name']}' polygon has a NaN or infinite coordinate")
    return rings
