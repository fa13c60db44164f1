"""python -m xray_ablate.quality [overrides]: BRISQUE quality report of a dataset, logged to MLflow.

Takes the same overrides as training (dataset=..., dataset.root=..., tracking.uri=...). Writes
quality.report_dir/<scores key>-<dataset mode>/quality.md with its PNGs and scores.csv, and
logs them as the artifacts of a run tagged xray.kind=quality.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from xray_ablate.config.load import check_command_line, to_config
from xray_ablate.config.schema import Config
from xray_ablate.data.atomic import check_writable
from xray_ablate.data.prepare import prepare
from xray_ablate.data.settings import data_config, ensure_synthetic
from xray_ablate.errors import exit_on_user_error
from xray_ablate.paths import CONFIG_DIR  # also registers the project_root resolver the config uses
from xray_ablate.quality.filter import apply_fences
from xray_ablate.quality.report import write_report
from xray_ablate.quality.scores import brisque_scores, scores_key
from xray_ablate.tracking import schema
from xray_ablate.tracking.lifecycle import tracked_run
from xray_ablate.tracking.store import code_version

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        path = run(to_config(cfg))
    print(f"quality report: {path}")


def run(cfg: Config) -> Path:
    """Score, write the report, log it; returns the path of quality.md."""
    data_cfg = data_config(cfg)  # first: says clearly when dataset.root is not set
    check_writable(Path(cfg.quality.report_dir), "the quality report folder", "set quality.report_dir to a folder")
    fences, factor = cfg.brisque_filter.fences, cfg.brisque_filter.iqr_factor
    ensure_synthetic(cfg)
    data = prepare(data_cfg)
    quality = cfg.quality
    workers = cfg.num_workers or os.cpu_count() or 1
    scores = brisque_scores(data, quality, Path(cfg.paths.cache_dir), workers)
    frame = data.table[["image_id", "cls", "split"]].assign(
        score=scores["score"].to_numpy(), status=scores["status"].to_numpy())
    preview = apply_fences(data.table, scores, fences, factor)
    key = scores_key(data.fingerprint, quality)
    header = (f"Dataset `{cfg.dataset.root}` (fingerprint `{data.fingerprint}`, mode "
              f"{cfg.dataset.mode}): {len(frame)} usable images. Each raw image was decoded to "
              f"grayscale and resized to a longer side of {quality.analysis_size} px; piq.brisque "
              f"with kernel {quality.kernel_size}, σ {quality.kernel_sigma:.4g}. Scores cache key "
              f"`{key}`.")
    # The key names the scores; the mode decides which images are usable, so both name the folder.
    out_dir = Path(cfg.quality.report_dir) / f"{key}-{cfg.dataset.mode}"
    report = write_report(out_dir, frame, header=header,
                          fences=fences, factor=factor, preview=preview)

    tags = {schema.KIND: "quality", schema.FINGERPRINT: data.fingerprint,
            schema.CODE_VERSION: code_version(), schema.SPLIT_HASH: data.manifest_hash}
    with tracked_run(cfg.tracking, f"quality-{key[:8]}", tags) as recorder:
        recorder.params({**quality.analysis(), "dataset_root": str(cfg.dataset.root),
                         "dataset_mode": cfg.dataset.mode, "scores_key": key,
                         "fences": fences, "iqr_factor": factor})
        recorder.metrics({**report.metrics(), **preview.metrics()})
        recorder.folder(report.markdown.parent, "quality")
    log.info("quality report written to %s", report.markdown)
    return report.markdown


def cli() -> None:
    with exit_on_user_error():
        check_command_line(sys.argv[1:])  # a bad key or value: one line and exit 2, before Hydra starts
    main()


if __name__ == "__main__":
    cli()
