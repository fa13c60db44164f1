"""fit_many(): member k of a batched pass is the run fit() trains for the same config and seed.

Exactness (CPU, float32): with dropout off, every member's test probabilities match fit()'s within
TOLERANCE, its history within the same relative tolerance, and its best epoch and params exactly.
The differences come from float summation order only (vmap runs the linear layers as batched
matmuls and the loss as one masked sum), measured at about 1e-7. Dropout masks cannot match:
fit() draws them from the global torch generator one model at a time, fit_many draws each member's
own masks under vmap(randomness="different"). A high learning rate amplifies rounding like any
chaotic process (1.4e-4 on probabilities after 3 epochs at lr=0.01 here), so the tests train at
rates where the runs are stable. The tests below turn dropout off for the exact
comparison and check separately that members draw different masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xray_ablate.models.cnn16 as cnn16
from xray_ablate.data.prepare import prepare
from xray_ablate.errors import UserError
from xray_ablate.settings import data_config
from xray_ablate.train.batched import fit_many
from xray_ablate.train.fit import RunResult, fit
from xray_ablate.train.inputs import prepare_inputs
from xray_ablate.train.loop import TrainingDiverged

TOLERANCE = 1e-5  # absolute, on probabilities; measured differences are about 1e-7
CPU = torch.device("cpu")


@pytest.fixture
def no_dropout(monkeypatch):
    """cnn16's head with dropout p=0, in both paths."""
    head = cnn16._head

    def without(in_features, num_classes):
        layers = head(in_features, num_classes)
        layers[3].p = 0.0
        return layers

    monkeypatch.setattr(cnn16, "_head", without)


def probs(result: RunResult) -> np.ndarray:
    return result.predictions.filter(like="prob_").to_numpy()


def train(configs):
    data = prepare(data_config(configs[0]))
    inputs = [prepare_inputs(c, data) for c in configs]
    return data, inputs, fit_many(configs, data, inputs, CPU)


def assert_same_run(batched: RunResult, single: RunResult):
    assert np.abs(probs(batched) - probs(single)).max() < TOLERANCE
    columns = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    np.testing.assert_allclose(batched.history[columns].to_numpy(), single.history[columns].to_numpy(),
                               rtol=TOLERANCE, atol=TOLERANCE)
    assert batched.best_epoch == single.best_epoch
    assert batched.params == single.params
    assert batched.predictions["image_id"].tolist() == single.predictions["image_id"].tolist()
    for key in ("test_accuracy", "val_accuracy", "epochs_run"):
        assert batched.metrics[key] == single.metrics[key], key


def test_one_member_is_the_sequential_run(make_cfg, no_dropout):
    config = make_cfg("trainer.epochs=2", "seed=3")
    data, inputs, (batched,) = train([config])
    assert_same_run(batched, fit(config, data, inputs[0], CPU))


@pytest.mark.slow
def test_three_different_members_are_their_sequential_runs(make_cfg, no_dropout):
    """Different seeds, class weights, augmentation, learning rate, training rows (half the
    training set: a shorter epoch, masked out of the last steps) and batch size."""
    configs = [make_cfg("trainer.epochs=2", "seed=0"),
               make_cfg("trainer.epochs=2", "seed=1", "class_weights=on", "trainer.lr=3e-4",
                        "augmentation.fill=0.5"),
               make_cfg("trainer.epochs=2", "seed=2", "augmentation=off", "dataset.train_fraction=0.5",
                        "trainer.batch_size=5", "trainer.optimizer=sgd", "trainer.lr_schedule=cosine")]
    data, inputs, batched = train(configs)
    assert len(inputs[2].train) < len(inputs[0].train)
    assert "class_weight_covid" in batched[1].params
    for config, member_inputs, member in zip(configs, inputs, batched, strict=True):
        assert_same_run(member, fit(config, data, member_inputs, CPU))


def test_early_stopping_per_member(make_cfg, no_dropout):
    """A member that stops early leaves the pack; the other trains on, both as fit() would."""
    configs = [make_cfg("trainer.epochs=4", "seed=0", "trainer.lr=0.003", "trainer.early_stopping_patience=1"),
               make_cfg("trainer.epochs=4", "seed=1")]
    data, inputs, batched = train(configs)
    assert batched[0].metrics["epochs_run"] < 4 == batched[1].metrics["epochs_run"]
    for config, member_inputs, member in zip(configs, inputs, batched, strict=True):
        assert_same_run(member, fit(config, data, member_inputs, CPU))


def test_members_draw_their_own_dropout_masks(make_cfg):
    """Two members with the same config and seed start equal; only their dropout masks differ."""
    config = make_cfg("trainer.epochs=1", "augmentation=off")
    _, _, (a, b) = train([config, config])
    assert np.abs(probs(a) - probs(b)).max() > 1e-4


def test_same_members_without_dropout_are_identical(make_cfg, no_dropout):
    config = make_cfg("trainer.epochs=1")
    _, _, (a, b) = train([config, config])
    assert np.abs(probs(a) - probs(b)).max() < TOLERANCE


def test_a_diverging_member_fails_alone(make_cfg):
    configs = [make_cfg("seed=0"), make_cfg("seed=1", "trainer.optimizer=sgd", "trainer.lr=1e12")]
    _, _, (good, bad) = train(configs)
    assert isinstance(bad, TrainingDiverged) and "trainer.lr" in str(bad)
    assert isinstance(good, RunResult) and 0 <= good.metrics["test_accuracy"] <= 1


def test_members_must_share_the_architecture(make_cfg):
    with pytest.raises(UserError, match="share backbone, image_size"):
        train([make_cfg("image_size=32"), make_cfg("image_size=64")])


def test_one_optimizer_over_members_equals_independent_ones():
    """torch.optim over all members' tensors, where a member without a batch has no gradient,
    steps each member exactly as its own optimizer that skips that step would."""
    torch.manual_seed(0)
    starts = [torch.randn(5, 3) for _ in range(3)]
    grads = [[torch.randn(5, 3) for _ in range(3)] for _ in range(6)]
    skips = {(1, 2), (3, 0), (4, 2), (5, 2)}  # (step, member) without a batch
    for build in (lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.01),
                  lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.01),
                  lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)):
        shared = [s.clone().requires_grad_() for s in starts]
        alone = [s.clone().requires_grad_() for s in starts]
        one, own = build(shared), [build([p]) for p in alone]
        for step, step_grads in enumerate(grads):
            one.zero_grad(set_to_none=True)
            for k, g in enumerate(step_grads):
                if (step, k) not in skips:
                    shared[k].grad = g.clone()
                    alone[k].grad = g.clone()
                    own[k].step()
                    own[k].zero_grad(set_to_none=True)
            one.step()
        for a, b in zip(shared, alone, strict=True):
            assert torch.equal(a, b)


@pytest.mark.slow
def test_batched_launcher_sweep_matches_the_basic_launcher(monkeypatch, tmp_path, no_dropout, capsys):
    """The same sweep through hydra/launcher=batched (forced on the CPU) and the basic launcher:
    the same runs, params and artifacts, and per (config, seed) the same test accuracy; run again,
    the batched sweep resumes (skips) every job."""
    from conftest import invoke_cli, mlflow_runs

    sweep = ["-m", "experiment=demo", "dataset.synthetic.n=40", "dataset.synthetic.size=64", "image_size=32",
             "backbone=cnn16_gap", "trainer.epochs=1", "trainer.batch_size=8", "num_workers=1", "seed=0,1",
             "tracking.log_checkpoint=false", "sweep.report=false"]
    assert invoke_cli(monkeypatch, tmp_path / "basic", *sweep) == 0
    assert invoke_cli(monkeypatch, tmp_path / "batched", *sweep, "hydra/launcher=batched",
                      "hydra.launcher.force=true") == 0
    runs = {name: {(r.data.tags["xray.config_key"], r.data.params["seed"]): r
                   for r in mlflow_runs(tmp_path / name, "demo")} for name in ("basic", "batched")}
    assert len(runs["basic"]) == 8 and runs["basic"].keys() == runs["batched"].keys()
    for key, basic in runs["basic"].items():
        batched = runs["batched"][key]
        assert batched.info.status == "FINISHED"
        assert batched.data.metrics["test_accuracy"] == basic.data.metrics["test_accuracy"], key
        assert abs(batched.data.metrics["test_loss"] - basic.data.metrics["test_loss"]) < TOLERANCE
        different = {k for k in basic.data.params if basic.data.params[k] != batched.data.params.get(k)}
        assert all(k.startswith(("paths.", "tracking.")) or k in ("dataset.root", "quality.report_dir")
                   for k in different), different  # only where each sweep's files live
        assert set(basic.data.metrics) == set(batched.data.metrics)
        assert artifacts(tmp_path / "basic", basic) == artifacts(tmp_path / "batched", batched)
    capsys.readouterr()
    assert invoke_cli(monkeypatch, tmp_path / "batched", *sweep, "hydra/launcher=batched",
                      "hydra.launcher.force=true") == 0
    assert "0 finished, 8 skipped" in capsys.readouterr().out
    assert len(mlflow_runs(tmp_path / "batched", "demo")) == 8


def artifacts(root, run) -> set[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    return {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_pack_too_wide_for_32_bit_indexing_runs_in_passes(make_cfg, no_dropout, monkeypatch):
    """cnn16 at 200 px, batch 32: 26 members per pass (64 x 200 x 200 activations per image), so the
    64-member pack that failed on a GPU runs in 3. Here: a limit small enough for one member per
    pass, and the three members end as the one-pass pack does."""
    from xray_ablate.config.schema import BackboneConfig
    from xray_ablate.models import build_model
    from xray_ablate.train import batched

    cnn = build_model(BackboneConfig("cnn16"), 4, 200, normalize=True, train_stats=(0.5, 0.25)).to("meta")
    assert batched._widest_activation(cnn, 200) == 64 * 200 * 200
    assert batched.INDEX_LIMIT // (32 * 64 * 200 * 200) == 26

    configs = [make_cfg("trainer.epochs=2", f"seed={seed}") for seed in range(3)]
    _, _, one_pass = train(configs)
    widest = batched._widest_activation(build_model(configs[0].backbone, 4, 32).to("meta"), 32)
    monkeypatch.setattr(batched, "INDEX_LIMIT", widest * configs[0].trainer.batch_size)  # one member a pass
    sizes, backward = [], batched._Stack._backward
    monkeypatch.setattr(batched._Stack, "_backward", lambda self, live, *a: sizes.append(len(live)) or
                        backward(self, live, *a))
    _, _, passes = train(configs)
    assert set(sizes) == {1} and len(sizes) % 3 == 0
    for a, b in zip(one_pass, passes, strict=True):
        assert_same_run(b, a)


def test_a_step_that_does_not_compile_runs_eagerly_and_says_why(make_cfg, no_dropout, monkeypatch, caplog):
    """compile=True where torch.compile fails at the first call: the pack trains eagerly, the runs
    are those of the eager pack, and each run's batched_compile param holds the reason."""
    from xray_ablate.train import batched

    def broken(fn):
        def call(*_args):
            raise RuntimeError("inductor: no C++ compiler\nmore detail")
        return call

    configs = [make_cfg("trainer.epochs=1", f"seed={seed}") for seed in range(2)]
    data, inputs, eager = train(configs)
    monkeypatch.setattr(batched.torch, "compile", broken)
    with caplog.at_level("WARNING", logger=batched.__name__):
        compiled = fit_many(configs, data, inputs, CPU, compile=True)
    reason = "failed, ran eagerly: RuntimeError: inductor: no C++ compiler"
    assert [r.params.pop("batched_compile") for r in compiled] == [reason, reason]
    assert caplog.text.count("torch.compile failed, running eagerly") == 1
    for a, b in zip(eager, compiled, strict=True):
        assert_same_run(b, a)


def test_the_bench_projects_the_table_from_sequential_and_the_best_batched_rate():
    """9 x 17 runs x 15 epochs = 2,295 member-epochs at each rate; one row when sequential is best."""
    from xray_ablate.bench import batched as bench

    rate = {"setup": 1.0, "utilisation": None}
    measured = {"sequential": {**rate, "rate": 2295 / 60 / 20}, (17, False): {**rate, "rate": 2295 / 60 / 30}}
    rows = bench._rows(measured, [], 4, 200, 6500, 3411, 1138, CPU)
    projected = [(r.what, r.value) for r in rows if r.what.startswith("projected")]
    assert projected == [("projected 9 x 17 table, 15 epochs, sequential fit() (cpu)", pytest.approx(20))]
    measured[(64, False)] = {**rate, "rate": 2295 / 60 / 8}
    projected = [(r.what, r.value) for r in bench._rows(measured, [], 4, 200, 6500, 3411, 1138, CPU)
                 if r.what.startswith("projected")]
    assert projected == [("projected 9 x 17 table, 15 epochs, sequential fit() (cpu)", pytest.approx(20)),
                         ("projected 9 x 17 table, 15 epochs, fit_many K=64, eager (cpu)", pytest.approx(8))]
    assert not bench._rows(measured, [], 4, 64, 600, 314, 106, CPU)[-1].what.startswith("projected")
