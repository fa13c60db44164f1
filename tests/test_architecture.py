"""The architecture's promises: fit() without MLflow, MLflow only in tracking/, no private Hydra API,
configs checked before anything runs, a factor's label never disagrees with what ran, and a new
factor is one entry in the factor table."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke_cli, mlflow_runs
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xray_ablate.config import factors
from xray_ablate.config.load import to_config
from xray_ablate.config.schema import Config, SwitchConfig
from xray_ablate.data.settings import data_config
from xray_ablate.errors import UserError
from xray_ablate.paths import CONFIG_DIR, project_root
from xray_ablate.train.fit import class_weights

PACKAGE = project_root() / "xray_ablate"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "xray_ablate":  # from xray_ablate import settings: the module settings
                names |= {f"xray_ablate.{a.name}" for a in node.names}
    return names


def test_mlflow_is_imported_by_tracking_only_and_no_private_hydra_api():
    for path in PACKAGE.rglob("*.py"):
        modules = imported_modules(path)
        where = path.relative_to(PACKAGE.parent)
        if where.parts[1] != "tracking":
            assert not {m for m in modules if m == "mlflow" or m.startswith("mlflow.")}, where
        assert not {m for m in modules if m.startswith("hydra._internal")}, where


# The import order (DESIGN.md): a unit may import only units on lower lines. Units are the
# top-level modules and packages of xray_ablate; any __main__.py is a command line, on the top line
# (bench/'s is the benchmarks').
LAYERS = (
    ("errors",), ("checksums",), ("paths",),
    ("config",), ("data",), ("evaluation",), ("stats",),
    ("quality", "models", "references"),  # side by side: none imports another
    ("train",), ("audit",), ("tracking",), ("sweep",), ("report",),
    ("cli", "bench"),  # command lines: every __main__.py, and the benchmarks
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return "cli" if parts[-1] == "__main__" and parts[0] != "bench" else parts[0]


def import_arrows() -> set[tuple[str, str, str]]:
    """(importing unit, imported unit, file) for every import of another unit of the package,
    at module level or inside a function."""
    arrows = set()
    for path in PACKAGE.rglob("*.py"):
        source = unit_of(path)
        for module in imported_modules(path):
            if module.startswith("xray_ablate."):
                target = module.split(".")[1]
                if target != source:
                    arrows.add((source, target, str(path.relative_to(PACKAGE.parent))))
    return arrows


def test_no_upward_import_and_no_cycle_between_packages():
    assert set(RANK) - {"cli"} == {unit_of(p) for p in PACKAGE.glob("*") if p.suffix == ".py" or (
        p / "__init__.py").is_file()} - {"cli", "__init__"}, "a unit is missing from LAYERS (or LAYERS names one gone)"
    upward = sorted(f"{file}: {source} imports {target}" for source, target, file in import_arrows()
                    if RANK[target] >= RANK[source])
    assert not upward, "imports against the order of LAYERS (which also rules out cycles):\n" + "\n".join(upward)


def test_the_config_schema_loads_without_torch_or_the_data_code():
    code = ("import sys; import xray_ablate.config.load; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('xray_ablate.data')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


FIT_WITHOUT_MLFLOW = """
import sys
sys.modules["mlflow"] = None  # any import of mlflow now fails
from pathlib import Path
from hydra import compose, initialize_config_dir
from xray_ablate.config.load import to_config
from xray_ablate.data.prepare import prepare
from xray_ablate.data.synthetic import generate
from xray_ablate.paths import CONFIG_DIR
from xray_ablate.data.settings import data_config
from xray_ablate.train.fit import fit
from xray_ablate.train.inputs import prepare_inputs
import torch

root = generate(Path(sys.argv[1]) / "data", n=40, seed=0, size=64)
with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
    config = to_config(compose("config", overrides=[f"dataset.root={root}", f"paths.cache_dir={sys.argv[1]}/cache",
        "image_size=32", "backbone=cnn16_gap", "trainer.epochs=2", "trainer.batch_size=8", "num_workers=1"]))
data = prepare(data_config(config))
result = fit(config, data, prepare_inputs(config, data), torch.device("cpu"))
assert list(result.history["epoch"]) == [1, 2] and 1 <= result.best_epoch <= 2
assert 0 <= result.metrics["test_accuracy"] <= 1 and len(result.predictions) == len(data.split_indices("test"))
assert not result.model.training
print("fit ok", round(result.metrics["test_accuracy"], 4), sys.modules["mlflow"] is not None)
"""


@pytest.mark.slow
def test_fit_trains_without_mlflow_or_a_tracking_uri(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-c", FIT_WITHOUT_MLFLOW, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith("fit ok") and done.stdout.strip().endswith("False")


def test_a_sweep_with_one_bad_job_stops_before_any_job_runs(monkeypatch, tmp_path, synthetic_root, capsys):
    code = invoke_cli(monkeypatch, tmp_path, "-m", f"dataset.root={synthetic_root}", "image_size=64,0", "seed=0")
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "error: image_size must be >= 64 for backbone cnn16, not 0 (job: image_size=0)"
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_a_new_factor_is_one_entry_in_the_factor_table(monkeypatch, tmp_path, synthetic_root, capsys):
    """The README's "Adding a factor" example: trainer.optimizer as a factor, nothing else changed;
    the sweep's parent run is named by it, and the printed links land on the store's runs."""
    monkeypatch.setattr(factors, "FACTORS", [*factors.FACTORS, factors.Factor("optimizer", "trainer.optimizer",
                                                                             "optimizer", "opt")])
    code = invoke_cli(monkeypatch, tmp_path, "-m", f"dataset.root={synthetic_root}", "image_size=32",
                      "backbone=cnn16_gap", "trainer.epochs=1", "trainer.batch_size=8", "num_workers=1",
                      "tracking.log_checkpoint=false", "tracking.log_figures=false", "trainer.optimizer=adam,sgd",
                      "repeats=1", "sweep.report=true")
    assert code == 0
    runs = mlflow_runs(tmp_path, "xray-ablate")
    assert sorted(r.data.tags["factor.optimizer"] for r in runs) == ["adam", "sgd"]
    assert sorted(r.info.run_name.split("-")[-2] for r in runs) == ["opt_adam", "opt_sgd"]
    table = pd.read_csv(next((tmp_path / "reports").glob("*/run_table.csv")))
    assert sorted(table["optimizer"]) == ["adam", "sgd"]
    assert "optimizer" in next((tmp_path / "reports").glob("*/report.md")).read_text()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("xray-ablate")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "**Ablation:** optimizer, 2 runs" in experiment.tags["mlflow.note.content"]
    (parent,) = mlflow_runs(tmp_path, "xray-ablate", kind="sweep")
    assert parent.info.run_name == "xray-ablate: optimizer"
    out = capsys.readouterr().out
    ui = "http://127.0.0.1:5000/#/experiments/"
    # The report saved the ablation view of its sweep: grouped by the new factor, sorted by its metric.
    assert f"runs in the MLflow UI: {ui}{experiment.experiment_id}/runs?viewStateShareKey=xray-ablate\n" in out
    state = json.loads(json.loads(experiment.tags["mlflow.sharedViewState.xray-ablate"])["state"])
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "factor.optimizer"}]
    assert state["searchFilter"] == f"tags.`xray.in_sweep.{parent.data.tags['xray.sweep_id']}` = '1'"
    assert state["orderByKey"] == "metrics.`test_accuracy`"
    shown = client.search_runs([experiment.experiment_id], state["searchFilter"])
    assert sorted(r.data.tags["xray.kind"] for r in shown) == ["report", "sweep", "train", "train"]
    (report_link,) = re.findall(r"report in the MLflow UI: (\S+)", out)
    exp_id, run_id, path = re.fullmatch(re.escape(ui) + r"(\w+)/runs/(\w+)/artifacts/(.+)", report_link).groups()
    report_run = client.get_run(run_id)
    assert exp_id == experiment.experiment_id == report_run.info.experiment_id
    assert report_run.data.tags["xray.kind"] == "report" and path == "report.html"
    assert path in {a.path for a in client.list_artifacts(run_id)}


def test_only_the_launchers_and_bench_suites_that_pay_remain():
    """Issue 26 retired vmap training over many seeds (it trained at 0.6-0.83x sequential, see
    BENCHMARKS.md): its launcher is gone from conf/ (the plugin folder of another checkout may still
    be on Hydra's namespace path, so conf/ is what counts), and so is its bench suite: the suites
    are exactly bench/'s modules."""
    from xray_ablate.bench.__main__ import SUITES

    launchers = project_root() / "conf" / "hydra" / "launcher"
    assert sorted(p.stem for p in launchers.glob("*.yaml")) == ["slurm", "slurm_local"]
    suites = {p.stem for p in (PACKAGE / "bench").glob("*.py")} - {"__init__", "__main__", "rows"}
    assert set(SUITES) == suites  # a suite is a module of bench/ with run(): none named without one


# What a run does for each factor, read where the code that does it reads it: the preprocessing's
# mode, the training subset's share, the loss's weights, the sampler's policy, the model's input
# standardisation, the batch augmentation, the BRISQUE filter, and what build_model() builds.
BEHAVIOUR = {
    "dataset": lambda c: data_config(c).preprocess.mode,
    "train_fraction": lambda c: c.dataset.train_fraction,
    "class_weights": lambda c: class_weights(c.class_weights, np.arange(4)) is not None,
    "class_balance": lambda c: c.class_balance.name,  # train/sampling.py dispatches on it
    "normalization": lambda c: c.normalization.enabled,
    "augmentation": lambda c: c.augmentation.enabled,
    "brisque_filter": lambda c: c.brisque_filter.enabled,
    "backbone": lambda c: (c.backbone.name, c.backbone.pretrained, c.backbone.freeze,
                           c.backbone.unfreeze_last if c.backbone.freeze == "last_n" else None),
}
EXTRA_VALUES = {bool: [True, False], int: [0, 1, 2], float: [0.0, 0.5, 1.0], str: ["x"]}


@pytest.fixture(scope="module")
def composed_choices() -> dict[str, dict]:
    """Each factor group's choices (conf/<group>/*.yaml), composed once: group -> choice -> config."""
    groups = {f.key.split(".")[0] for f in factors.FACTORS}
    base = ["dataset.root=/nonexistent", "paths.cache_dir=/nonexistent", "image_size=299"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return {group: {p.stem: compose("config", overrides=[*base, f"{group}={p.stem}"])
                        for p in sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))} for group in groups}


def _values(cls, group: str, key: str, composed: list) -> list:
    """What to set ``key`` of a group to: every value its choices give it, and a few of its type."""
    hint = typing.get_type_hints(cls)[key]
    types = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    values = [None] + [v for t in types for v in EXTRA_VALUES.get(t, [])]
    values += [OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
               for v in (OmegaConf.select(c, f"{group}.{key}") for c in composed)]
    return list({repr(v): v for v in values}.values())


def test_no_override_of_a_factor_group_makes_its_label_disagree_with_what_ran(composed_choices):
    """Issue 26. Every key of each factor's group (from the schema, so a new key is covered) is set
    to each value its choices use and a few of its type, under each choice of the group: the config
    is refused, or one label always means one behaviour, and a switch labelled "on" ran on."""
    assert set(BEHAVIOUR) == set(factors.factor_names()), "a new factor needs its behaviour here"
    for factor in factors.FACTORS:
        group = factor.key.split(".")[0]
        cls = typing.get_type_hints(Config)[group]
        composed = list(composed_choices[group].values())
        seen: dict[str, set] = {}
        for cfg in composed:
            typed, values = to_config(cfg), OmegaConf.to_container(cfg[group], resolve=True)
            for key in (f.name for f in dataclasses.fields(cls)):
                for value in _values(cls, group, key, composed):
                    try:  # the group typed and checked as to_config() does, then the whole config
                        node = OmegaConf.merge(OmegaConf.structured(cls), {**values, key: value})
                        config = dataclasses.replace(typed, **{group: OmegaConf.to_object(node)})
                        seen.setdefault(factors.level(config, factor), set()).add(BEHAVIOUR[factor.name](config))
                    except (UserError, OmegaConfBaseException):
                        continue  # refused before anything runs
        mixed = {label: ran for label, ran in seen.items() if len(ran) > 1}
        assert not mixed, f"{factor.name}: one label, several behaviours: {mixed}"
        if issubclass(cls, SwitchConfig):
            assert seen == {"off": {False}, "on": {True}}, (factor.name, seen)


def test_each_factor_level_is_its_hydra_choice(composed_choices):
    """backbone=resnet50_ft is labelled resnet50_ft, normalization=off "off", and so on; the
    training fraction is a number, not a choice, and dataset=demo is a data source (masked)."""
    for factor in factors.FACTORS:
        if factor.name == "train_fraction":
            continue
        for choice, cfg in composed_choices[factor.key.split(".")[0]].items():
            assert factors.level(to_config(cfg), factor) == {"demo": "masked"}.get(choice, choice), choice


@pytest.mark.parametrize("override, message", [
    ("normalization.enabled=false", "Could not override 'normalization.enabled'"),
    ("backbone.label=vgg16", "Could not override 'backbone.label'"),
    ("class_weights.weights=inverse_frequency",
     "class_weights.weights must be null with class_weights=off (class_weights=on weights the loss), "
     "not 'inverse_frequency'"),
])
def test_a_run_cannot_be_labelled_other_than_it_ran(monkeypatch, tmp_path, synthetic_root, capsys, override,
                                                    message):
    """The mislabel of issue 26 (normalization.enabled=false trained unnormalised runs tagged "on"),
    and its kin, through the CLI: one line naming the key, exit status 2, no MLflow run."""
    code = invoke_cli(monkeypatch, tmp_path, f"dataset.root={synthetic_root}", override)
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err and len((captured.out + captured.err).strip().splitlines()) == 1
    assert not (tmp_path / "mlruns").exists()


def test_each_registry_holds_exactly_the_names_a_config_may_choose():
    from xray_ablate.config import choices
    from xray_ablate.models import FEATURE_BUILDERS, SCRATCH_MODELS
    from xray_ablate.train.optim import OPTIMIZERS, SCHEDULES

    assert tuple(SCRATCH_MODELS) + tuple(FEATURE_BUILDERS) == choices.BACKBONES
    assert (tuple(OPTIMIZERS), tuple(SCHEDULES)) == (choices.OPTIMIZERS, choices.SCHEDULES)
    with pytest.raises(RuntimeError, match=r"optimizers: registry keys \('adam',\) differ from config.choices"):
        choices.check_registry("optimizers", {"adam": None}, choices.OPTIMIZERS)
