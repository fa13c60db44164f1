"""python -m xray_ablate.data summary ROOT [--metadata CSV] [--json]: ingest a dataset and print
what it holds, with the class x attribute counts and their association."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from xray_ablate.config.choices import MIN_PREPARED_SIZE
from xray_ablate.config.schema import check_patient_pattern
from xray_ablate.data.ingest import IngestOptions
from xray_ablate.data.masks import PreprocessOptions
from xray_ablate.data.prepare import DataConfig, prepare
from xray_ablate.data.summary import format_summary, summarize
from xray_ablate.errors import UserError
from xray_ablate.paths import project_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xray_ablate.data")
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser("summary", help="images per class, exclusions, splits, patients")
    summary.add_argument("root", type=Path)
    summary.add_argument("--json", action="store_true", help="print one JSON object")
    summary.add_argument("--cache-dir", type=Path, default=None,
                         help="default: $XRAY_ABLATE_CACHE or .cache in the project")
    summary.add_argument("--image-size", type=int, default=200)
    summary.add_argument("--workers", type=int, default=0,
                         help="processes that preprocess the images (default 0: one per core)")
    summary.add_argument("--patient-pattern", default=None)
    summary.add_argument("--metadata", type=Path, default=None,
                         help="CSV of attributes per image, joined on the image file name")
    summary.add_argument("--metadata-key", default=None,
                         help="its column of file names (default: the first of name, image, filename, file)")
    args = parser.parse_args(argv)
    if args.image_size < MIN_PREPARED_SIZE:
        parser.error(f"--image-size must be at least {MIN_PREPARED_SIZE}, not {args.image_size}")
    if args.metadata_key is not None and args.metadata is None:
        parser.error("--metadata-key names a column of the --metadata CSV: give --metadata too")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    cache_dir = args.cache_dir or Path(
        os.environ.get("XRAY_ABLATE_CACHE") or project_root() / ".cache")
    config = DataConfig(
        root=args.root, cache_dir=cache_dir,
        ingest=IngestOptions(patient_pattern=args.patient_pattern),
        preprocess=PreprocessOptions(mode="raw", image_size=args.image_size),
        metadata=args.metadata, metadata_key=args.metadata_key, workers=args.workers, root_setting="ROOT",
    )
    try:
        if args.patient_pattern is not None:
            check_patient_pattern(args.patient_pattern, "--patient-pattern")
        result = summarize(prepare(config))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
