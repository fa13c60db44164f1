"""Every shipped experiment (experiments/*.yaml) runs end to end through the real command line.

Tiny sizes: 64 px phantoms, one epoch, one seed. Each test asserts what a user would check: every
job FINISHED, the sweep summary line, and a report with one row per configuration.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import invoke_cli, mlflow_runs

from xray_ablate.data.synthetic import generate
from xray_ablate.settings import project_root

pytestmark = pytest.mark.slow
TINY = ["trainer.epochs=1", "repeats=1", "num_workers=1", "tracking.log_checkpoint=false"]


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


def test_demo_experiment(monkeypatch, tmp_path, capsys):
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=demo", "dataset.synthetic.n=40",
                      "dataset.synthetic.size=64", *TINY)
    assert code == 0
    check_sweep(tmp_path, capsys.readouterr().out, "demo", 4)


def test_study_phase2_one_factor_at_a_time(monkeypatch, tmp_path, capsys, phantoms, brisque_weights):
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=study_phase2", f"dataset.root={phantoms}",
                      "image_size=64", *TINY)
    assert code == 0
    table = check_sweep(tmp_path, capsys.readouterr().out, "study_phase2", 6)
    # one row per variant: the benchmark and five single-factor changes
    runs = mlflow_runs(tmp_path, "study_phase2")
    params = runs[0].data.params
    assert not any("+" in name for name in params), "config keys reach MLflow unsanitised"
    assert "sweep.design.one_at_a_time._variant" in params
    assert len(table) == 6


def test_study_phase2_on_the_real_fixture(monkeypatch, tmp_path, capsys, fixture_root, brisque_weights):
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=study_phase2", f"dataset.root={fixture_root}",
                      "image_size=64", *TINY)
    assert code == 0
    check_sweep(tmp_path, capsys.readouterr().out, "study_phase2", 6)


def test_study_phase2_full_factorial(monkeypatch, tmp_path, capsys, phantoms, brisque_weights):
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=study_phase2", "full_factorial=true",
                      f"dataset.root={phantoms}", "image_size=32", "backbone=cnn16_gap",
                      "trainer.batch_size=16", *TINY)
    assert code == 0
    check_sweep(tmp_path, capsys.readouterr().out, "study_phase2", 32)
    assert (tmp_path / "reports" / "study_phase2" / "anova.csv").is_file()


def standin_checkpoints(torch_home: Path, hf_home: Path) -> None:
    """Randomly initialised weights of each pretrained backbone, saved under the exact file names
    the loaders look for, so loading, freezing and fine-tuning run for real without a download."""
    import timm
    import torchvision.models as tvm
    from safetensors.torch import save_file

    from xray_ablate.models.weights import torch_hub_file

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    builders = {tvm.VGG16_Weights: tvm.vgg16, tvm.VGG19_Weights: tvm.vgg19, tvm.ResNet50_Weights: tvm.resnet50,
                tvm.Inception_V3_Weights: lambda: tvm.inception_v3(aux_logits=True, init_weights=False)}
    for weights, build in builders.items():
        name = Path(weights.IMAGENET1K_V1.url).name
        # half precision halves the files; load_state_dict copies into the float32 parameters
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in build().state_dict().items()},
                   checkpoints / name)
        assert torch_hub_file(weights.IMAGENET1K_V1.url) == checkpoints / name
    cfg = timm.models.get_pretrained_cfg("legacy_xception")
    repo = hf_home / "hub" / f"models--{cfg.hf_hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("standin")
    (repo / "snapshots" / "standin").mkdir(parents=True)
    model = timm.create_model("legacy_xception", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(repo / "snapshots" / "standin" / (cfg.hf_hub_filename or "model.safetensors")))


def test_study_pretrained_with_standin_weights(monkeypatch, tmp_path, capsys, phantoms):
    torch_home, hf_home = tmp_path / "torch", tmp_path / "hf"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    standin_checkpoints(torch_home, hf_home)
    code = invoke_cli(monkeypatch, tmp_path, "-m", "experiment=study_pretrained", f"dataset.root={phantoms}",
                      "image_size=75", "trainer.batch_size=16", *TINY)
    assert code == 0
    check_sweep(tmp_path, capsys.readouterr().out, "study_pretrained", 7)
    by_backbone = {r.data.tags["factor.backbone"]: r.data.params for r in mlflow_runs(tmp_path, "study_pretrained")}
    assert set(by_backbone) == {"cnn16", "vgg16", "vgg19", "resnet50", "xception", "inception_v3", "resnet50_ft"}
    assert by_backbone["resnet50_ft"]["backbone.freeze"] == "last_n"


def test_every_shipped_experiment_has_a_test_and_a_readme():
    here = Path(__file__).read_text()
    for path in (project_root() / "experiments").glob("*.yaml"):
        assert f"experiment={path.stem}" in here, f"no test runs experiments/{path.name}"
        assert path.with_suffix(".md").is_file(), f"experiments/{path.stem}.md is missing"
