"""Builders shared by the data tests (no tests here): tiny Darwin datasets and an independent
reference for which output pixels a set of polygons covers.

The reference does not use the code under test: it maps output pixel centres back to image
coordinates itself and asks matplotlib's ``Path.contains_points`` (even-odd per shape).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import shapely
from matplotlib.path import Path as MplPath
from PIL import Image

from xray_ablate.data.ingest import IngestOptions
from xray_ablate.data.masks import PreprocessOptions
from xray_ablate.data.prepare import DataConfig
from xray_ablate.data.splits import SplitOptions

CLASS_TAG = {
    "bacterial": "Bacterial Pneumonia", "viral": "Viral Pneumonia",
    "covid": "COVID-19", "healthy": "No Pneumonia (healthy)",
}


def config(root: Path, cache_dir: Path, mode: str = "masked", size: int = 32, *,
           resize: str = "stretch", crop: bool = False, split_seed: int = 0,
           layout: str = "auto", workers: int = 1) -> DataConfig:
    return DataConfig(
        root=Path(root), cache_dir=Path(cache_dir),
        ingest=IngestOptions(layout=layout),
        preprocess=PreprocessOptions(mode=mode, image_size=size, resize=resize, crop_to_lungs=crop),
        split=SplitOptions(seed=split_seed), workers=workers,
    )


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def ramp(width: int, height: int) -> np.ndarray:
    """A smooth image whose value at continuous (x, y) is known: never 0, so 0 means masked."""
    x = (np.arange(width) + 0.5) / width
    y = (np.arange(height) + 0.5) / height
    return np.round(40 + 150 * x[None, :] + 50 * y[:, None]).astype(np.uint8)


def ramp_value(x: np.ndarray, y: np.ndarray, width: int, height: int) -> np.ndarray:
    return 40 + 150 * x / width + 50 * y / height


def ring_json(ring) -> list[dict]:
    return [{"x": float(x), "y": float(y)} for x, y in ring]


def darwin_v1(filename: str, width: int, height: int, *, lungs=(), ignores=(), tags=(),
              folder: str = "/") -> dict:
    """A Darwin 1.0 document; a shape with one ring is a polygon, with more a complex_polygon."""
    annotations = []
    for name, shapes in (("Lung", lungs), ("Ignore", ignores)):
        for shape in shapes:
            if len(shape) == 1:
                annotations.append({"name": name, "polygon": {"path": ring_json(shape[0])}})
            else:
                annotations.append({"name": name,
                                    "complex_polygon": {"path": [ring_json(r) for r in shape]}})
    annotations += [{"name": t, "tag": {}} for t in tags]
    return {"image": {"width": width, "height": height, "filename": filename,
                      "original_filename": filename, "path": folder},
            "annotations": annotations}


def darwin_v2(filename: str, width: int, height: int, *, lungs=(), ignores=(), tags=()) -> dict:
    annotations = []
    for i, (name, shape) in enumerate([("Lung", s) for s in lungs] + [("Ignore", s) for s in ignores]):
        annotations.append({"id": f"p{i}", "name": name, "slot_names": ["0"],
                            "polygon": {"paths": [ring_json(r) for r in shape]}})
    annotations += [{"id": f"t{i}", "name": t, "tag": {}, "slot_names": ["0"]}
                    for i, t in enumerate(tags)]
    return {
        "version": "2.0",
        "schema_ref": "https://darwin-public.s3.eu-west-1.amazonaws.com/darwin_json/2.0/schema.json",
        "item": {"name": filename, "path": "/", "slots": [{
            "type": "image", "slot_name": "0", "width": width, "height": height,
            "source_files": [{"file_name": filename, "url": None}]}]},
        "annotations": annotations,
    }


def write_item(root: Path, stem: str, pixels: np.ndarray | None, *, fmt: str = "png",
               doc: dict | None = None, cls: str = "healthy", patient: str | None = None,
               lungs=None, ignores=(), extra_tags=()) -> Path:
    """Write images/<stem>.<fmt> (unless pixels is None) and annotations/<stem>.json."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    filename = f"{stem}.{fmt}"
    if pixels is not None:
        Image.fromarray(pixels).save(root / "images" / filename)
        height, width = pixels.shape[:2]
    else:
        width, height = 64, 64
    if doc is None:
        if lungs is None:
            lungs = default_lungs(width, height)
        tags = [CLASS_TAG[cls], f"PatientID:{patient or stem}", "X-ray", "View/PA", *extra_tags]
        doc = darwin_v1(filename, width, height, lungs=lungs, ignores=ignores, tags=tags)
    path = root / "annotations" / f"{stem}.json"
    path.write_text(json.dumps(doc))
    return path


def default_lungs(width: int, height: int) -> list[list[np.ndarray]]:
    """Two plain lung rectangles."""
    w, h = width, height
    left = np.array([[0.15 * w, 0.2 * h], [0.45 * w, 0.2 * h], [0.45 * w, 0.85 * h], [0.15 * w, 0.85 * h]])
    right = left + [0.4 * w, 0]
    return [[left], [right]]


def output_to_image(px: np.ndarray, py: np.ndarray, box, out_w: int, out_h: int, offset=(0, 0)):
    """Continuous image coordinates of output pixel centres (px, py are pixel indices)."""
    x0, y0, x1, y1 = box
    x = (px + 0.5 - offset[0]) * (x1 - x0) / out_w + x0
    y = (py + 0.5 - offset[1]) * (y1 - y0) / out_h + y0
    return x, y


def shapes_contain(shapes, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Union over shapes of even-odd membership of the shape's rings."""
    points = np.stack([x, y], axis=1)
    union = np.zeros(len(points), bool)
    for shape in shapes:
        inside = np.zeros(len(points), bool)
        for ring in shape:
            inside ^= MplPath(np.asarray(ring, float)).contains_points(points)
        union |= inside
    return union


def edge_distance(rings, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest polygon edge (same coordinates as the rings)."""
    edges = shapely.MultiLineString([np.vstack([r, r[:1]]) for r in map(np.asarray, rings)])
    return shapely.distance(shapely.points(np.stack([x, y], axis=1)), edges)


def expected_mask(lungs, ignores, size: int, box, out_w: int, out_h: int, offset=(0, 0),
                  margin: float = 1.5, window=None):
    """(inside, checkable): which output pixels Lung minus Ignore covers, and which pixels lie
    more than ``margin`` output pixels from every edge and inside the placed image area.
    ``window`` (x0, y0, x1, y1 output pixels) limits the check to a part of the output."""
    wx0, wy0, wx1, wy1 = window or (0, 0, size, size)
    py, px = np.mgrid[wy0:wy1, wx0:wx1]
    px, py = px.ravel().astype(float), py.ravel().astype(float)
    x, y = output_to_image(px, py, box, out_w, out_h, offset)
    inside = shapes_contain(lungs, x, y) & ~shapes_contain(ignores, x, y)
    sx, sy = out_w / (box[2] - box[0]), out_h / (box[3] - box[1])
    rings = [(np.asarray(r, float) - [box[0], box[1]]) * [sx, sy] + offset
             for shape in list(lungs) + list(ignores) for r in shape]
    dist = edge_distance(rings, px + 0.5, py + 0.5)
    in_area = ((px >= offset[0]) & (px < offset[0] + out_w)
               & (py >= offset[1]) & (py < offset[1] + out_h))
    full_inside, full_checkable = np.zeros((size, size), bool), np.zeros((size, size), bool)
    full_inside[wy0:wy1, wx0:wx1] = inside.reshape(wy1 - wy0, wx1 - wx0)
    full_checkable[wy0:wy1, wx0:wx1] = ((dist > margin) & in_area).reshape(wy1 - wy0, wx1 - wx0)
    return full_inside, full_checkable
