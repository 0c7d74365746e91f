"""Configuration: ``etc/latentvo.toml`` defaults, an optional site file, ``LATENTVO_*`` overrides.

The result is a plain nested dict passed explicitly to whatever needs it; nothing reads
configuration from module globals.
"""

from __future__ import annotations

import copy
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "etc" / "latentvo.toml"
ENV_PREFIX = "LATENTVO_"
ENV_CONFIG_FILE = "LATENTVO_CONFIG"

Config = dict[str, dict[str, Any]]


class ConfigError(ValueError):
    """A configuration value is missing or has the wrong type."""


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge the defaults, a site file (``path`` or $LATENTVO_CONFIG), the environment, then ``overrides``."""
    config = _read_toml(DEFAULTS_FILE)
    environ = os.environ if environ is None else environ
    site = path or environ.get(ENV_CONFIG_FILE)
    if site:
        _merge(config, _read_toml(Path(site)), source=str(site))
    _merge(config, _from_environment(config, environ), source="environment")
    if overrides:
        _merge(config, overrides, source="overrides")
    return config


def _read_toml(path: Path) -> Config:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc}") from exc


def _merge(config: Config, update: Mapping[str, Mapping[str, Any]], source: str) -> None:
    for section, values in update.items():
        if section not in config:
            raise ConfigError(f"{source}: unknown section [{section}]")
        for key, value in values.items():
            if key not in config[section]:
                raise ConfigError(f"{source}: unknown key {section}.{key}")
            config[section][key] = _coerce(config[section][key], value, f"{section}.{key}")


def _from_environment(config: Config, environ: Mapping[str, str]) -> Config:
    found: Config = {}
    for section, values in config.items():
        for key in values:
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            if name in environ:
                found.setdefault(section, {})[key] = environ[name]
    return found


def _coerce(default: Any, value: Any, name: str) -> Any:
    """Give a value (often a string from the environment) the type of its default."""
    if not isinstance(value, str) or isinstance(default, str):
        return copy.deepcopy(value)
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):
            return json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot read {value!r} as {type(default).__name__}") from exc
    return value
