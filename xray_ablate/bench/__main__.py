"""python -m xray_ablate.bench [SUITE ...]: run benchmark suites and rewrite their rows in BENCHMARKS.md."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import re
from pathlib import Path

import torch

from xray_ablate.bench.rows import machine
from xray_ablate.paths import project_root

SUITES = ("data", "train", "quality", "sweep", "audit", "verdicts")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xray_ablate.bench")
    # No default list with choices: argparse checks a list default against choices as one value.
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of {', '.join(SUITES)}; none = all")
    parser.add_argument("--out", type=Path, default=None,
                        help="the file to rewrite the rows in (default BENCHMARKS.md; with --smoke, none)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, to prove every suite runs (the figures mean nothing: printed, and "
                             "written only to an --out given)")
    args = parser.parse_args(argv)
    out = args.out or (None if args.smoke else project_root() / "BENCHMARKS.md")
    if out is not None and out.is_dir():
        parser.error(f"--out {out} is a folder: give the file to rewrite the rows in")
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    for suite in args.suites or SUITES:
        rows = importlib.import_module(f"xray_ablate.bench.{suite}").run(smoke=args.smoke)
        for row in rows:
            print(row.markdown())
        if out is not None:
            _write_section(out, suite, rows)


def _write_section(path: Path, suite: str, rows) -> None:
    """Replace this suite's section of BENCHMARKS.md, keeping the others. A run on a GPU machine
    has its own section (``<suite>-cuda``), so CPU and GPU figures do not replace each other."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    gpu = torch.cuda.is_available()
    name, heading = (f"{suite}-cuda", f"{suite} on a GPU") if gpu else (suite, suite)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = "\n".join([
        start, f"## {heading}", "",
        f"{dt.date.today().isoformat()}, {machine()}.", "",
        "| suite | what | value | target | met | command | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[r.markdown() for r in rows], end,
    ])
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
