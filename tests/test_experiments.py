"""Every shipped experiment (experiments/*.yaml) runs end to end through the real command line.

Tiny sizes: 64 px phantoms, one epoch, one seed. Each test asserts what a user would check: every
job FINISHED, the sweep summary line, and a report with one row per configuration. The demo is run
at its real size by `make run` (tests/test_readme_commands.py::test_make_run_and_report).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import invoke_cli, mlflow_runs

from xray_ablate.data.synthetic import generate
from xray_ablate.paths import project_root

pytestmark = pytest.mark.slow
TINY = ["trainer.epochs=1", "repeats=1", "num_workers=1", "tracking.log_checkpoint=false", "tracking.log_figures=false"]
# for sweeps whose test asserts nothing of the saliency audit (tests/test_audit*.py, the demo, study_phase2
# and study_pretrained run it)
NO_AUDIT = ["audit.enabled=false"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("phantoms") / "data", n=48, seed=1, size=96)


def check_sweep(root: Path, out: str, experiment: str, n_jobs: int) -> pd.DataFrame:
    """Asserts the summary, the FINISHED runs and the report; returns the run table."""
    assert re.search(rf"{n_jobs} jobs: {n_jobs} finished, 0 skipped \(already finished\), 0 failed", out), out[-3000:]
    runs = mlflow_runs(root, experiment)
    assert len(runs) == n_jobs and {r.info.status for r in runs} == {"FINISHED"}
    table = pd.read_csv(root / "reports" / experiment / "run_table.csv")
    assert len(table) == len({r.data.tags["xray.config_key"] for r in runs}) == n_jobs
    assert (root / "reports" / experiment / "report.md").is_file()
    return table


def test_study_phase2_one_factor_at_a_time_on_the_real_fixture(monkeypatch, tmp_path, capsys, fixture_root,
                                                                brisque_weights):
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=study_phase2", f"dataset.root={fixture_root}",
                      "image_size=64", *TINY)
    assert code == 0
    table = check_sweep(tmp_path, capsys.readouterr().out, "study_phase2", 6)
    # one row per variant: the benchmark and five single-factor changes
    params = mlflow_runs(tmp_path, "study_phase2")[0].data.params
    assert not any("+" in name for name in params), "config keys reach MLflow unsanitised"
    assert "sweep.design.one_at_a_time._variant" in params
    assert len(table) == 6


def test_study_phase2_full_factorial(monkeypatch, tmp_path, capsys, phantoms, brisque_weights):
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=study_phase2", "full_factorial=true",
                      f"dataset.root={phantoms}", "image_size=32", "backbone=cnn16_gap",
                      "trainer.batch_size=16", *TINY, *NO_AUDIT)
    assert code == 0
    check_sweep(tmp_path, capsys.readouterr().out, "study_phase2", 32)
    assert (tmp_path / "reports" / "study_phase2" / "anova.csv").is_file()


def test_study_imbalance_experiment(monkeypatch, tmp_path, capsys, phantoms):
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=study_imbalance", f"dataset.root={phantoms}",
                      "image_size=32", "backbone=cnn16_gap", "class_balance.max_per_class=3", *TINY, *NO_AUDIT)
    assert code == 0
    check_sweep(tmp_path, capsys.readouterr().out, "study_imbalance", 8)


def standin_checkpoints(torch_home: Path, monkeypatch) -> None:
    """Randomly initialised weights of each pretrained backbone under the exact file names the
    loaders look for, their SHA-256 pinned in place of the published ones: loading, hash checks,
    freezing and fine-tuning all run for real, and nothing is downloaded."""
    import hashlib

    import timm
    import torchvision.models as tvm

    from xray_ablate.models import weights

    builders = {"vgg16": tvm.vgg16, "vgg19": tvm.vgg19, "resnet50": tvm.resnet50,
                "inception_v3": lambda: tvm.inception_v3(aux_logits=True, init_weights=False),
                "xception": lambda: timm.create_model("legacy_xception", pretrained=False)}
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for name, build in builders.items():
        state = build().state_dict()
        if name.startswith("vgg"):  # the loader reads the conv features only: 59 MB instead of 528
            state = {k: v for k, v in state.items() if k.startswith("features.")}
        path = folder / weights.CHECKPOINTS[name].filename
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        monkeypatch.setitem(weights.CHECKPOINTS, name, weights.Checkpoint(weights.CHECKPOINTS[name].url, digest))


def test_study_pretrained_with_standin_weights(monkeypatch, tmp_path, capsys, phantoms):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    standin_checkpoints(tmp_path / "torch", monkeypatch)
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=study_pretrained", f"dataset.root={phantoms}",
                      "image_size=75", "trainer.batch_size=16", "audit.images=4", *TINY)
    assert code == 0
    check_sweep(tmp_path, capsys.readouterr().out, "study_pretrained", 7)
    by_backbone = {r.data.tags["factor.backbone"]: r.data.params for r in mlflow_runs(tmp_path, "study_pretrained")}
    assert set(by_backbone) == {"cnn16", "vgg16", "vgg19", "resnet50", "xception", "inception_v3", "resnet50_ft"}
    assert by_backbone["resnet50_ft"]["backbone.freeze"] == "last_n"


def test_every_shipped_experiment_has_a_test_and_a_readme():
    # the demo runs at its real size through `make run` (tests/test_readme_commands.py), the learning
    # curve on the real fixture in tests/test_report_curves.py
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    here = tests + (project_root() / "Makefile").read_text()
    for path in (project_root() / "experiments").glob("*.yaml"):
        assert f"experiment={path.stem}" in here, f"no test runs experiments/{path.name}"
        assert path.with_suffix(".md").is_file(), f"experiments/{path.stem}.md is missing"
