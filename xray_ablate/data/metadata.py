"""Attributes per image (source, View, Sex, age band, ...): from prefixed Darwin tags and an
optional CSV joined on the image file name.

Tags: ``Name/Value`` and ``Name:Value`` give attribute ``Name`` = ``Value`` (the first ``/`` or
``:`` splits; ``PatientID`` is the patient, not an attribute; several tags of one name on an
image join as ``a+b``). A numeric age (an attribute named ``Age`` in any case, from a tag or a
CSV column) is binned into ``AGE_BINS``. The CSV (``dataset.metadata``) is joined on the image
file name with or without its extension, in the column ``dataset.metadata_key`` (default: the
first of ``KEY_CANDIDATES`` present); where it and a tag name the same attribute, the CSV wins.

An image without a value has the level ``MISSING``. An attribute is kept when it has 2 to
``MAX_LEVELS`` levels (MISSING included); constant and identifier-like columns (more levels)
and CSV columns that repeat the table's own columns are skipped, each with its reason. CSV rows
that match no image and images that match no row are counted, never dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from xray_ablate.errors import UserError

log = logging.getLogger(__name__)

MISSING = "(missing)"
MAX_LEVELS = 12
KEY_CANDIDATES = ("name", "image", "filename", "file")
# Lower edges (years) and labels of the age bands: [0, 18) is "0-17", ..., [80, inf) is "80+".
AGE_BINS: tuple[tuple[float, str], ...] = ((0, "0-17"), (18, "18-39"), (40, "40-59"), (60, "60-79"),
                                           (80, "80+"))
# Columns the prepared table already has: a CSV column of that name is not an attribute.
TABLE_COLUMNS = ("image_id", "cls", "label", "patient_id", "view", "split", "image_path")
_NOT_ATTRIBUTES = {"patientid"}
_TAG = re.compile(r"^([^/:]+)[/:](.*)$")
_EXAMPLES = 5


@dataclass
class MetadataReport:
    """Where the attributes came from and what did not match."""

    attributes: dict[str, str] = field(default_factory=dict)  # name -> "tag" | "csv"
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not an attribute
    csv: str | None = None
    key: str | None = None
    rows: int = 0
    rows_matched: int = 0
    rows_of_excluded: int = 0  # rows whose image ingest excluded
    rows_unmatched: int = 0  # rows naming no image of the dataset
    rows_unmatched_examples: list[str] = field(default_factory=list)
    images_unmatched: int = 0  # usable images without a row: their CSV attributes are MISSING
    images_unmatched_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def age_band(value: str) -> str:
    """A numeric age as its band in AGE_BINS; anything else unchanged."""
    try:
        age = float(value)
    except ValueError:
        return value
    if age < 0:
        return value
    return [label for lower, label in AGE_BINS if age >= lower][-1]


def tag_attributes(tags: list[str]) -> dict[str, str]:
    """Prefixed tags as attributes: ``View/PA`` -> {"View": "PA"}, ``Age:65`` -> {"Age": "60-79"}."""
    values: dict[str, set[str]] = {}
    for tag in tags:
        match = _TAG.match(tag)
        if not match:
            continue
        name, value = match.group(1).strip(), match.group(2).strip()
        if name and value and name.lower() not in _NOT_ATTRIBUTES:
            values.setdefault(name, set()).add(_binned(name, value))
    return {name: "+".join(sorted(v)) for name, v in values.items()}


def _binned(name: str, value: str) -> str:
    return age_band(value) if name.lower() == "age" else value


def read_metadata(path: Path, key: str | None) -> tuple[pd.DataFrame, str]:
    """The CSV as strings, and its key column; one UserError line per problem."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise UserError(f"dataset.metadata {path}: cannot read it as CSV ({err})") from None
    if key is None:
        key = next((c for c in KEY_CANDIDATES if c in frame.columns), None)
        if key is None:
            raise UserError(f"dataset.metadata {path} has none of the columns {', '.join(KEY_CANDIDATES)}; "
                            "set dataset.metadata_key to the column holding image file names")
    elif key not in frame.columns:
        raise UserError(f"dataset.metadata_key {key!r} is not a column of {path} "
                        f"(columns: {', '.join(frame.columns)})")
    names = frame[key].map(_file_name)
    repeated = names[names.duplicated()]
    if not repeated.empty:
        raise UserError(f"dataset.metadata {path}: image {repeated.iloc[0]!r} has more than one row "
                        f"(column {key})")
    return frame, key


def _file_name(value: str) -> str:
    return PurePosixPath(value.strip().replace("\\", "/")).name


def attributes_for(table: pd.DataFrame, excluded_ids: set[str], csv: Path | None = None,
                   key: str | None = None) -> tuple[pd.DataFrame, MetadataReport]:
    """Attribute columns for ``table`` (image_id, image_path, tags joined by "|"), row by row,
    and the report of what matched. ``excluded_ids``: image ids ingest excluded."""
    from_tags = pd.DataFrame([tag_attributes(t.split("|") if t else []) for t in table["tags"]],
                             index=table.index)
    report = MetadataReport()
    columns = {name: from_tags[name] for name in sorted(from_tags.columns)}
    origin = dict.fromkeys(columns, "tag")
    if csv is not None:
        frame, key = read_metadata(csv, key)
        positions = _match_rows(table, frame, key, excluded_ids, report, csv)
        for name in frame.columns:
            if name == key:
                continue
            column = frame[name].to_numpy()
            columns[name] = pd.Series([_binned(name, column[p].strip()) if p is not None else MISSING
                                       for p in positions], index=table.index)
            origin[name] = "csv"
    out = {}
    for name, values in columns.items():
        if name in TABLE_COLUMNS:
            report.skipped[name] = "a column of the table itself"
            continue
        values = values.where(values.notna() & (values != ""), MISSING).astype(str)
        levels = values.nunique()
        if levels < 2:
            report.skipped[name] = f"one level ({values.iloc[0] if len(values) else 'no images'})"
        elif levels > MAX_LEVELS:
            report.skipped[name] = f"{levels} levels (more than {MAX_LEVELS}: an identifier, not a subgroup)"
        else:
            out[name] = values
            report.attributes[name] = origin[name]
    return pd.DataFrame(out, index=table.index), report


def _match_rows(table: pd.DataFrame, frame: pd.DataFrame, key: str, excluded_ids: set[str],
                report: MetadataReport, csv: Path) -> list[int | None]:
    """For each table row, the position of its image's CSV row (None when none); fills ``report``."""
    by_name = {_file_name(v): i for i, v in enumerate(frame[key])}
    files = [PurePosixPath(str(p).replace("\\", "/")) for p in table["image_path"]]
    positions = [by_name.get(f.name, by_name.get(f.stem)) for f in files]
    matched = set(positions) - {None}
    excluded = {PurePosixPath(i).name for i in excluded_ids}
    unmatched, of_excluded = [], 0
    for name, i in by_name.items():
        if i in matched:
            continue
        if name in excluded or PurePosixPath(name).stem in excluded:
            of_excluded += 1
        else:
            unmatched.append(name)
    missing = [i for i, p in zip(table["image_id"], positions, strict=True) if p is None]
    report.csv, report.key, report.rows = str(csv), key, len(frame)
    report.rows_matched, report.rows_of_excluded = len(matched), of_excluded
    report.rows_unmatched, report.rows_unmatched_examples = len(unmatched), unmatched[:_EXAMPLES]
    report.images_unmatched, report.images_unmatched_examples = len(missing), missing[:_EXAMPLES]
    if unmatched or missing:
        log.warning("metadata %s: %d rows name no image (e.g. %s); %d images have no row (e.g. %s)",
                    csv, len(unmatched), ", ".join(unmatched[:_EXAMPLES]) or "-", len(missing),
                    ", ".join(missing[:_EXAMPLES]) or "-")
    return positions


def attributes_digest(table: pd.DataFrame, names: list[str] | tuple[str, ...]) -> str:
    """Content hash of the named attribute columns per image (a cache key ingredient)."""
    canonical = table[["image_id", *names]].sort_values("image_id").to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def require_attributes(names: list[str], report: MetadataReport) -> None:
    """UserError for a requested attribute the data does not have (eval.subgroups)."""
    for name in names:
        if name not in report.attributes:
            why = report.skipped.get(name)
            known = ", ".join(report.attributes) or "none"
            raise UserError(f"eval.subgroups: attribute {name!r} "
                            + (f"is not usable: {why}" if why else "is not in the data")
                            + f" (attributes: {known}; set dataset.metadata for CSV attributes)")
