"""`python -m xray_ablate.models fetch [BACKBONE ...] [--to DIR]`: download and verify pretrained weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from xray_ablate.errors import UserError, exit_on_user_error
from xray_ablate.models import FEATURE_BUILDERS, SCRATCH_MODELS
from xray_ablate.models.weights import cache_dir, ensure_checkpoint


def fetch(backbones: list[str], directory: Path | None = None) -> list[Path]:
    """Download what is missing, verify everything, print where each file is; the files."""
    unknown = [name for name in backbones if name not in FEATURE_BUILDERS]
    if unknown:
        scratch = [name for name in unknown if name in SCRATCH_MODELS]
        why = f"{', '.join(scratch)}: trained from scratch, no weights to fetch; " if scratch else ""
        raise UserError(f"cannot fetch {', '.join(unknown)}: {why}pretrained backbones are "
                        f"{', '.join(FEATURE_BUILDERS)}")
    paths = []
    for name in dict.fromkeys(backbones or FEATURE_BUILDERS):  # in order, once each
        path, fetched = ensure_checkpoint(name, download_missing=True, directory=directory)
        print(f"{name}: {path} ({'downloaded' if fetched else 'already there'}, SHA-256 verified)")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xray_ablate.models", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser(
        "fetch", help="download missing pretrained checkpoints (resumable), verify their SHA-256")
    fetch_cmd.add_argument("backbones", nargs="*", metavar="BACKBONE",
                           help=f"default: all of {', '.join(FEATURE_BUILDERS)}")
    fetch_cmd.add_argument("--to", type=Path, default=None, metavar="DIR",
                           help=f"folder for the files (default {cache_dir()}, i.e. $TORCH_HOME/hub/checkpoints)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        fetch(args.backbones, args.to)


if __name__ == "__main__":
    main()
