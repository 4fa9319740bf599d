"""Configuration: loading, schema defaults and checks shared by the CLI and the workflow."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from deltarad.layout import resolve_params
from deltarad.runlog import UserError

SCHEMAS = ("config", "samples", "clinical")
# The pyradiomics parameter presets shipped with DeltaRad (features.params).
PRESETS = Path(__file__).resolve().parents[2] / "config" / "radiomics"


class ConfigError(UserError):
    """The configuration is invalid; the message lists every problem."""


def schema_path(name: str) -> Path:
    """Path of a bundled JSON schema (config, samples or clinical)."""
    if name not in SCHEMAS:
        raise KeyError(name)
    return Path(str(resources.files("deltarad") / "schemas" / f"{name}.schema.yaml"))


def load_schema(name: str) -> dict[str, Any]:
    """A bundled schema as a dict. libyaml's parser when PyYAML has it (the same safe subset,
    several times faster on the config schema, which every workflow invocation loads)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(schema_path(name).read_text(), Loader=loader)


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update, as Snakemake merges several --configfile files."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    if "$ref" in schema:
        ref = schema["$ref"].removeprefix("#/").split("/")
        target = root
        for part in ref:
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    if isinstance(instance, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                instance[key] = _fill_defaults(instance[key], sub, root)
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [_fill_defaults(item, schema["items"], root) for item in instance]
    return instance


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` with every schema default filled in (as snakemake's validate does)."""
    schema = load_schema("config")
    return _fill_defaults(copy.deepcopy(config), schema, schema)


def check_config(config: dict[str, Any]) -> list[str]:
    """Every problem of a (defaults-filled) config: schema errors, then cross-key checks."""
    schema = load_schema("config")
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"config key '{'.'.join(str(p) for p in err.absolute_path) or '(top level)'}': "
        f"{err.message}"
        for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        return problems
    centers = known_centers(config)
    for c in config["study"]["external_centers"]:
        if centers and c not in centers:
            problems.append(
                f"config key 'study.external_centers': centre '{c}' is not one of the known "
                f"centres {sorted(centers)}"
            )
    if config["cohort"]["source"] == "sheets":
        for key in ("samples", "clinical"):
            if not config["cohort"][key]:
                problems.append(f"config key 'cohort.{key}': required when cohort.source is sheets")
    for stage in ("rigid", "affine", "bspline"):
        block = config["registration"][stage]
        if len(block["shrink"]) != len(block["smoothing_mm"]):
            problems.append(
                f"config key 'registration.{stage}': shrink and smoothing_mm need one value "
                "per pyramid level each"
            )
    window = config["registration"]["bspline"].get("window_percentiles")
    if window is not None and not window[0] < window[1]:
        problems.append(
            "config key 'registration.bspline.window_percentiles': must be [low, high] with "
            f"low < high, got {window}"
        )
    cohort = config["cohort"]
    reference, channels = cohort.get("reference_channel"), cohort.get("channels") or []
    if reference and channels and reference not in channels:
        problems.append(
            f"config key 'cohort.reference_channel': '{reference}' is not one of "
            f"cohort.channels {channels}"
        )
    synthetic_channels = [config["synthetic"]["contrast"]] + [
        c["name"] for c in config["synthetic"].get("extra_channels") or []
    ]
    if len(set(synthetic_channels)) != len(synthetic_channels):
        problems.append(
            "config key 'synthetic.extra_channels': channel names must differ from each other "
            f"and from the reference channel (named after synthetic.contrast): {synthetic_channels}"
        )
    names = [c["name"] for c in config["synthetic"]["centers"]]
    if len(set(names)) != len(names):
        problems.append("config key 'synthetic.centers': centre names must be unique")
    mid = config["synthetic"].get("mid_treatment_days")
    if mid and not mid[0] <= mid[1] < config["synthetic"]["followup_days"][0]:
        problems.append(
            "config key 'synthetic.mid_treatment_days': must be [low, high] with low <= high "
            f"and high before synthetic.followup_days starts, got {mid}"
        )
    problems += _params_problems(config["features"]["params"])
    return problems


def _params_problems(params: str) -> list[str]:
    """A pyradiomics parameter file that cannot be found, with the presets that exist."""
    try:
        resolve_params(params)
    except UserError:
        presets = sorted(PRESETS.glob("*.yaml"))
        names = ", ".join(f"config/radiomics/{p.name}" for p in presets)
        return [
            f"config key 'features.params': parameter file {params!r} not found (in the "
            f"working directory or the DeltaRad folder); presets: {names}"
        ]
    return []


def check_results_dir(config: dict[str, Any]) -> list[str]:
    """The results folder must be creatable and writable: say so before any job starts.

    Snakemake would otherwise fail on the first job's output with an OS error that does not
    name the config key.
    """
    target = Path(config["results"]).expanduser()
    probe = target.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [
            f"config key 'results': {probe} is a file, not a folder, so results cannot go to "
            f"{target}"
        ]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [
            f"config key 'results': folder {probe} is not writable, so results cannot go to "
            f"{target}; choose a folder you can write to"
        ]
    return []


def known_centers(config: dict[str, Any]) -> list[str]:
    """Centres a sample sheet may name: study.centers, or the synthetic centres by default."""
    if config["study"]["centers"]:
        return list(config["study"]["centers"])
    if config["cohort"]["source"] == "synthetic":
        return [c["name"] for c in config["synthetic"]["centers"]]
    return []


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Load and merge YAML files (later ones override), fill defaults, raise on any problem."""
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        merged = deep_update(merged, data)
    config = with_defaults(merged)
    problems = check_config(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON form of a config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
