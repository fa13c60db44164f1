"""Ingest a dataset folder into one record per source file: usable images and exclusions.

Two layouts: a V7 Darwin export (``annotations/*.json`` + ``images/``) and an ImageFolder
(``root/<class>/*.png|jpg``, raw only). A Darwin export may also sit where ``darwin dataset pull``
puts it (darwin-py): ``<dataset>/images/`` (nested folders with ``--folders``) beside
``<dataset>/releases/<version>/annotations/``; ``locate`` maps the dataset folder or a release
folder onto the export's two folders. Every file ends up as a record; a record with a
``reason`` is excluded, and the reason names what is wrong with which file. Folders are read
with walk.list_files, so a symbolic link loop is one record too, and never walked around.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import shapely
from PIL import UnidentifiedImageError

from xray_ablate.data import labels
from xray_ablate.data.darwin import DarwinFormatError, Shape, read_darwin
from xray_ablate.data.decode import ImageTooLarge, open_image
from xray_ablate.data.walk import Listing, list_files, never_resolves
from xray_ablate.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class IngestOptions:
    layout: str = "auto"  # auto | darwin | imagefolder
    annotations_dir: str = "annotations"
    images_dir: str = "images"
    release: str = "latest"  # darwin-py layout: the folder under releases/ (latest: the newest)
    # Regex with one group, applied to the file name when an image has no PatientID tag.
    patient_pattern: str | None = None
    # Polygon vertices may lie this far outside the image (px) before the polygon is rejected.
    bounds_tolerance: float = 2.0


@dataclass
class ImageRecord:
    image_id: str
    source: Path  # the JSON file (Darwin) or the image file (ImageFolder)
    image_path: Path | None = None
    cls: str | None = None
    patient_id: str = ""
    view: str = ""
    modality: str = "X-ray"
    width: int = 0
    height: int = 0
    tags: list[str] = field(default_factory=list)
    lungs: list[Shape] = field(default_factory=list)
    ignores: list[Shape] = field(default_factory=list)
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None

    def exclude(self, reason: str, detail: str) -> ImageRecord:
        assert reason in labels.EXCLUSION_REASONS, reason
        self.reason, self.detail = reason, detail
        return self


@dataclass
class Inventory:
    layout: str
    records: list[ImageRecord]
    unknown_tags: dict[str, int] = field(default_factory=dict)
    patient_fallbacks: int = 0  # images whose patient is the image itself

    @property
    def maskable(self) -> bool:
        """Whether the masked dataset can be built: Darwin with lung polygons."""
        return self.layout == "darwin" and any(r.lungs for r in self.records)


def locate(root: Path, options: IngestOptions) -> tuple[Path, IngestOptions]:
    """The folder that holds the export and the options naming its two folders.

    A darwin-py dataset folder (``releases/`` and ``images/``, no ``annotations/``) or one of its
    release folders (``<dataset>/releases/<name>/annotations/``) becomes the dataset folder with
    ``annotations_dir`` = ``releases/<version>/annotations`` (``latest``, darwin-py's link to the
    newest release, resolved to that release's name, so both spellings are the same data).
    Any other root is returned as it is.
    """
    root = Path(root)
    if options.layout == "imagefolder" or (root / options.annotations_dir).is_dir() and (
            root / options.images_dir).is_dir():
        return root, options
    if (root / "releases").is_dir() and (root / options.images_dir).is_dir():
        dataset, release = root, options.release
    elif root.parent.name == "releases" and (root.parent.parent / options.images_dir).is_dir():
        dataset, release = root.parent.parent, root.name
    else:
        return root, options
    folder = dataset / "releases" / release
    if not folder.is_dir():
        found = ", ".join(sorted(p.name for p in (dataset / "releases").iterdir() if p.is_dir())) or "none"
        raise UserError(f"no release folder {folder} (releases there: {found}): pass dataset.release=NAME")
    if folder.resolve().parent == (dataset / "releases").resolve():
        release = folder.resolve().name  # latest -> the version it links to
    annotations = f"releases/{release}/{options.annotations_dir}"
    if not (dataset / annotations).is_dir():
        raise UserError(f"no annotation folder {dataset / annotations} in the darwin-py release "
                        f"{folder}: pull the release again (darwin dataset pull)")
    return dataset, replace(options, annotations_dir=annotations, layout="darwin", release=release)


def detect_layout(root: Path, options: IngestOptions) -> str:
    if options.layout != "auto":
        return options.layout
    return "darwin" if (root / options.annotations_dir).is_dir() else "imagefolder"


def ingest(root: Path, options: IngestOptions = IngestOptions()) -> Inventory:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder")
    root, options = locate(root, options)
    layout = detect_layout(root, options)
    if layout == "darwin":
        inventory = _ingest_darwin(root, options)
    elif layout == "imagefolder":
        inventory = _ingest_imagefolder(root, options)
    else:
        raise ValueError(f"dataset.layout must be auto, darwin or imagefolder, not {layout!r}")
    _exclude_duplicates(inventory.records)
    if inventory.maskable:
        for rec in inventory.records:
            if rec.ok and not rec.lungs:
                rec.exclude("no_lung_polygon", "no Lung polygon, so it cannot be masked")
    for rec in inventory.records:
        if not rec.ok:
            log.warning("excluded %s: %s (%s)", rec.source, rec.reason, rec.detail)
    return inventory


def _ingest_darwin(root: Path, options: IngestOptions) -> Inventory:
    ann_dir = root / options.annotations_dir
    listing = list_files(ann_dir)
    files = sorted(path for path in listing.files if path.suffix == ".json")
    if not files:
        raise FileNotFoundError(f"no Darwin JSON files under {ann_dir}")
    inventory = Inventory("darwin", _loop_records(listing))
    for path in files:
        inventory.records.append(_per_file(path, _darwin_record, root, path, options, inventory))
    inventory.records += _unannotated_images(root, options, inventory.records, files)
    return inventory


def _darwin_record(root: Path, path: Path, options: IngestOptions, inv: Inventory) -> ImageRecord:
    rec = ImageRecord(image_id=path.stem, source=path)
    try:
        darwin = read_darwin(path)
    except DarwinFormatError as err:
        return rec.exclude(err.reason, err.detail)
    except OSError as err:
        return rec.exclude("not_json", f"cannot read: {err.strerror or err}")

    # Lexical check (abspath normalises '..' without following links): a JSON may not point
    # outside images/, but images/ may hold symlinks (DVC, git-annex, a dataset view).
    images_root = Path(os.path.abspath(root / options.images_dir))
    image_path = Path(os.path.abspath(images_root / darwin.folder.lstrip("/") / darwin.filename))
    if not image_path.is_relative_to(images_root):
        return rec.exclude("path_escapes_root", f"image {darwin.filename!r} is outside {images_root}")
    flat = images_root / Path(darwin.filename).name
    if not image_path.exists() and flat.is_file():  # darwin-py pulled without --folders: images/ is flat
        image_path = flat
    rec.image_id = Path(darwin.filename).stem
    rec.image_path, rec.width, rec.height = image_path, darwin.width, darwin.height
    rec.tags, rec.lungs, rec.ignores = darwin.tags, darwin.lungs, darwin.ignores
    rec.view, rec.modality = labels.view_of(rec.tags), labels.modality_of(rec.tags)
    rec.patient_id = labels.patient_of(rec.tags) or _fallback_patient(rec, darwin.filename, options, inv)
    for tag in labels.unknown_tags(rec.tags):
        inv.unknown_tags[tag] = inv.unknown_tags.get(tag, 0) + 1

    if not _check_image_file(rec, (darwin.width, darwin.height)):
        return rec
    label = labels.label_from_tags(rec.tags)
    if label.reason:
        return rec.exclude(label.reason, label.detail)
    rec.cls = label.cls
    _check_geometry(rec, options.bounds_tolerance)
    return rec


def _ingest_imagefolder(root: Path, options: IngestOptions) -> Inventory:
    listing = list_files(root)
    inventory = Inventory("imagefolder", [])
    for path in sorted(p for p in listing.files if p.suffix.lower() in IMAGE_SUFFIXES):
        inventory.records.append(_per_file(path, _imagefolder_record, root, path, options, inventory))
    if not inventory.records and not listing.loops:
        raise FileNotFoundError(
            f"{root} has neither an 'annotations' folder (Darwin) nor class folders with images"
        )
    inventory.records += _loop_records(listing)
    return inventory


def _imagefolder_record(root: Path, path: Path, options: IngestOptions, inv: Inventory) -> ImageRecord:
    rel = path.relative_to(root)
    rec = ImageRecord(image_id=rel.with_suffix("").as_posix(), source=path, image_path=path)
    folder = rel.parts[0] if len(rel.parts) > 1 else ""
    rec.cls = labels.FOLDER_ALIASES.get(folder.lower())
    rec.patient_id = _fallback_patient(rec, path.name, options, inv)
    if rec.cls is None:
        rec.exclude("no_class_tag", f"folder {folder!r} is not one of {sorted(labels.FOLDER_ALIASES)}")
    else:
        _check_image_file(rec, None)
    return rec


def _per_file(source: Path, build, *args) -> ImageRecord:
    """``build(*args)``, the record of one source file; a failure nobody foresaw excludes that
    file as unexpected_error (with the exception's one-line message) instead of stopping the
    whole dataset."""
    try:
        return build(*args)
    except Exception as err:  # the per-file boundary: a bug in one file stays in that file
        return ImageRecord(image_id=source.stem, source=source).exclude("unexpected_error", one_line(err))


def one_line(err: BaseException) -> str:
    """``Type: first line of the message``, for exclusion details and warnings."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _unannotated_images(root: Path, options: IngestOptions, records: list[ImageRecord],
                        annotation_files: list[Path]) -> list[ImageRecord]:
    """Files in images/ that no JSON points to: excluded as no_annotation, so they are counted.
    An image named like a JSON that could not be read is already counted with that JSON."""
    images_root = root / options.images_dir
    if not images_root.is_dir():
        return []
    listing = list_files(images_root)
    used = {os.path.abspath(r.image_path) for r in records if r.image_path is not None}
    stems = {p.stem for p in annotation_files}
    return [
        ImageRecord(image_id=path.stem, source=path, image_path=path).exclude(
            "no_annotation", f"no JSON in {options.annotations_dir}/ refers to {path.name}")
        for path in sorted(listing.files)
        if path.suffix.lower() in IMAGE_SUFFIXES and path.stem not in stems
        and os.path.abspath(path) not in used
    ] + [loop for loop in _loop_records(listing) if os.path.abspath(loop.source) not in used]


def _loop_records(listing: Listing) -> list[ImageRecord]:
    """One exclusion per link that loops (a file or a folder link: its files are never read)."""
    return [ImageRecord(image_id=path.stem, source=path).exclude("symlink_loop", detail)
            for path, detail in sorted(listing.loops.items())]


def _fallback_patient(rec: ImageRecord, filename: str, options: IngestOptions, inv: Inventory) -> str:
    """Without a PatientID tag: the pattern's group, else the image is its own patient."""
    if options.patient_pattern:
        match = re.search(options.patient_pattern, filename)
        if match:
            return match.group(1)
    inv.patient_fallbacks += 1
    return f"image:{rec.image_id}"


def _check_image_file(rec: ImageRecord, annotated_size: tuple[int, int] | None) -> bool:
    """Header-only check: the file exists, is an image, and has the annotated size."""
    if never_resolves(rec.image_path):
        rec.exclude("symlink_loop", f"image file {rec.image_path} is a link that never resolves")
        return False
    if not rec.image_path.is_file():
        rec.exclude("image_missing", f"image file {rec.image_path} not found")
        return False
    try:
        with open_image(rec.image_path) as im:
            size = im.size
    except ImageTooLarge as err:
        rec.exclude("image_too_large", str(err))
        return False
    except (UnidentifiedImageError, OSError) as err:
        rec.exclude("image_unreadable", f"{rec.image_path.name}: {err}")
        return False
    if annotated_size is not None and tuple(size) != tuple(annotated_size):
        rec.exclude(
            "size_mismatch",
            f"image is {size[0]}x{size[1]} but the JSON says {annotated_size[0]}x{annotated_size[1]}",
        )
        return False
    rec.width, rec.height = size
    return True


def shape_geometry(shape: Shape) -> shapely.Geometry:
    """Rings of one shape combined by the even-odd rule (inner rings become holes)."""
    geom = shapely.Polygon()
    for ring in shape:
        geom = shapely.symmetric_difference(geom, shapely.Polygon(ring))
    return geom


def _crosses_itself(ring: np.ndarray) -> bool:
    """A ring whose self-intersection changes its area by more than 1 %.

    Hand-drawn V7 outlines often touch themselves at a point (zero-area loops: 5 of the 50
    V7 COVID-19 JSONs in cxr-mini); those fill the same pixels either way and are kept. A ring
    that really crosses itself (a bow-tie) has an ambiguous inside and is rejected.
    """
    polygon = shapely.Polygon(ring)
    if polygon.is_valid:
        return False
    repaired = shapely.make_valid(polygon).area
    return abs(repaired - abs(polygon.area)) > 0.01 * max(repaired, 1e-9)


def _check_geometry(rec: ImageRecord, tolerance: float) -> None:
    for kind, shapes in (("Lung", rec.lungs), ("Ignore", rec.ignores)):
        for shape in shapes:
            for ring in shape:
                if len(ring) < 3:
                    rec.exclude("polygon_too_few_points", f"a {kind} polygon has {len(ring)} points")
                    return
                lo, hi = ring.min(axis=0), ring.max(axis=0)
                if (lo < -tolerance).any() or hi[0] > rec.width + tolerance or hi[1] > rec.height + tolerance:
                    rec.exclude(
                        "polygon_out_of_bounds",
                        f"a {kind} polygon spans x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f} "
                        f"outside the {rec.width}x{rec.height} image",
                    )
                    return
                if _crosses_itself(ring):
                    rec.exclude(
                        "polygon_self_intersecting",
                        f"a {kind} polygon crosses itself: "
                        f"{shapely.is_valid_reason(shapely.Polygon(ring))}",
                    )
                    return
    if rec.lungs:
        lung = shapely.union_all([shape_geometry(s) for s in rec.lungs])
        if rec.ignores:
            lung = lung.difference(shapely.union_all([shape_geometry(s) for s in rec.ignores]))
        if lung.area < 1.0:
            rec.exclude("empty_mask", "Lung minus Ignore covers less than one pixel")


def _exclude_duplicates(records: list[ImageRecord]) -> None:
    first: dict[str, ImageRecord] = {}
    for rec in records:
        if not rec.ok:
            continue
        key = rec.image_id
        if key in first:
            rec.exclude("duplicate_id", f"image id {key!r} is already used by {first[key].source}")
        else:
            first[key] = rec


def exclude_identical_images(records: list[ImageRecord], digest_of: dict[Path, str]) -> None:
    """Keep the first of several images with the same bytes: copies under two names would
    otherwise land in different splits as if they were different patients' images."""
    first: dict[str, ImageRecord] = {}
    for rec in records:
        digest = digest_of.get(Path(os.path.abspath(rec.image_path))) if rec.ok else None
        if digest is None:
            continue
        if digest in first:
            rec.exclude("duplicate_image", f"same bytes as {first[digest].image_path.name} "
                                           f"({first[digest].source.name})")
            log.warning("excluded %s: %s (%s)", rec.source, rec.reason, rec.detail)  # as ingest() names the rest
        else:
            first[digest] = rec


def lung_bbox(rec: ImageRecord) -> tuple[float, float, float, float]:
    pts = np.concatenate([ring for shape in rec.lungs for ring in shape])
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return (max(0.0, x0), max(0.0, y0), min(float(rec.width), x1), min(float(rec.height), y1))
