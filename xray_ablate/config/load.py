"""Compose, type and validate configs; plan a sweep's jobs, all before any job starts.

Only Hydra's public API: ``compose`` and the override parser. The sweep expansion (the basic
sweeper's rule: sweeper params from the config first, then the command line, a later value of a
key replacing an earlier one, and the cartesian product of the values in that order) is the one
the sweep runs: hydra/sweeper=planned (sweep/sweeper.py) launches ``expand_sweep``'s jobs, so the
job numbers are the plan's.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from dataclasses import dataclass

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from xray_ablate.config.schema import Config
from xray_ablate.errors import UserError
from xray_ablate.paths import CONFIG_DIR


def to_config(cfg: DictConfig) -> Config:
    """The typed config of a composed one (its ``hydra`` node, if any, left out)."""
    node = cfg.copy()
    with open_dict(node):
        node.pop("hydra", None)
    unknown = next(_added_keys(node), None)
    if unknown:
        raise UserError(unknown)
    try:
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        raise UserError(one_line(err)) from None


def _added_keys(node, prefix: str = ""):
    """A message for each key that ``+key=value`` added to a typed group: Hydra adds it, and the
    typed config would drop it without a word (``+trainer.epochz=5`` trained the default epochs)."""
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            if isinstance(item, DictConfig | ListConfig):
                yield from _added_keys(item, f"{prefix}[{i}]")
        return
    kind = OmegaConf.get_type(node)
    fields = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else None
    for key, value in node.items_ex(resolve=False):
        name = f"{prefix}.{key}" if prefix else str(key)
        if fields is not None and key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
            yield f"{name} is not a setting{hint}"
        elif isinstance(value, DictConfig | ListConfig) and not value._is_none():  # e.g. dataset.synthetic: null
            yield from _added_keys(value, name)


NOISE = ("object_type=", "reference_type=", "Set the environment", "To append",  # hints, not the problem
         "Config search path", "provider=")


def one_line(err: BaseException) -> str:
    """Hydra and OmegaConf errors span lines (key, types, hints); keep what names the problem."""
    causes = [err, *([err.__cause__] if err.__cause__ else [])]
    lines = [ln.strip() for e in causes for ln in str(e).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(NOISE)]
    key = next((ln.removeprefix("full_key:").strip() for ln in keep if ln.startswith("full_key:")), None)
    parts: list[str] = []
    for ln in dict.fromkeys(ln for ln in keep if not ln.startswith("full_key:")):
        if parts and parts[-1].startswith("Available options"):  # one choice a line: a list
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + ln
        else:
            parts.append(ln)
    text = "; ".join(parts)
    return f"{key}: {text}" if key and key not in text else text


@dataclass
class Plan:
    multirun: bool
    jobs: list[list[str]]  # each job's task overrides, as Hydra gives them (hydra.* ones apart)
    configs: list[Config]  # each job's typed, validated config
    primary: DictConfig | None  # a sweep's primary config with its hydra node (launcher, sweeper, sweep dir)


def plan(overrides: list[str], multirun: bool, config_name: str = "config") -> Plan:
    """Every job of a run or sweep, composed and validated: a UserError names the first bad key."""
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            primary, jobs = None, [list(overrides)]
            if multirun:  # a single run needs no primary config: one compose (about 0.1 s) less
                parsed = OverridesParser.create().parse_overrides(overrides)
                fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
                primary = compose(config_name, overrides=fixed, return_hydra_config=True)
                params = OmegaConf.to_container(primary.hydra.sweeper.params or {}, resolve=True)
                jobs = expand_sweep([f"{k}={v}" for k, v in params.items()] + list(overrides))
            configs = _job_configs(config_name, jobs, multirun)
            jobs = [[o for o in job if not o.lstrip("+~").startswith(("hydra.", "hydra/"))] for job in jobs]
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(one_line(err)) from None
    except (AssertionError, AttributeError) as err:  # OmegaConf's own, merging into a null typed node
        raise UserError(f"{_first_unmergeable(config_name, list(overrides))}: cannot be applied ("
                        f"{type(err).__name__}: {one_line(err)}); a setting that is null here (dataset.synthetic "
                        "outside dataset=demo) takes no sub-keys") from None
    return Plan(multirun, jobs, configs, primary)


def _first_unmergeable(config_name: str, overrides: list[str]) -> str:
    """The first override that composing fails on (a swept one at its first value), for the
    message; else all of them."""
    first_values = expand_sweep(overrides)[0]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for i, override in enumerate(overrides):
            try:
                compose(config_name, overrides=first_values[:i + 1])
            except Exception:  # any failure names the override; the caller says why
                return override
    return " ".join(overrides)


def check_command_line(args: list[str]) -> None:
    """A one-job command line (the report's, the quality CLI's) checked before Hydra starts, so a
    bad key or value is a UserError, not Hydra's lines and exit 1. Hydra's own flags pass."""
    if not any(a.startswith("-") for a in args):
        plan(args, multirun=False)


def _job_configs(config_name: str, jobs: list[list[str]], multirun: bool) -> list[Config]:
    """Each job's typed config. Jobs that differ only in ``seed=`` are composed once (a Hydra
    compose takes about 0.23 s) and get their seed on a copy before it is typed, so an interpolation
    of ${seed} still resolves per job."""
    composed: dict[tuple[str, ...], DictConfig] = {}
    configs = []
    for job in jobs:
        rest = tuple(o for o in job if not o.startswith("seed="))
        seeds = [o.split("=", 1)[1] for o in job if o.startswith("seed=")]
        try:
            if rest not in composed:
                composed[rest] = compose(config_name, overrides=list(rest))
            cfg = composed[rest].copy()
            if seeds:
                cfg.seed = seeds[-1]
            configs.append(to_config(cfg))
        except (HydraException, OmegaConfBaseException, UserError) as err:
            message = str(err) if isinstance(err, UserError) else one_line(err)
            label = _swept(job, jobs) if multirun else ""  # only for the message: it reads every job
            raise UserError(message + (f" (job: {label})" if label else "")) from None
    return configs


def _swept(job: list[str], jobs: list[list[str]]) -> str:
    """The overrides that tell this job from the others (those of swept keys)."""
    values: dict[str, set[str]] = {}
    for other in jobs:
        for override in other:
            values.setdefault(override.split("=", 1)[0], set()).add(override)
    return " ".join(o for o in job if len(values[o.split("=", 1)[0]]) > 1)


def expand_sweep(arguments: list[str]) -> list[list[str]]:
    """The jobs of a basic sweep over ``arguments`` (``key=a,b``, ``key=range(3)``, ``key=v``)."""
    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise UserError(f"{override.input_line}: only discrete sweeps (a,b / range / choice) can run")
            values[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*values.values())]
