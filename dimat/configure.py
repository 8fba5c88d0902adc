"""Composing the config as `python -m dimat` does, and the error bad input raises.

Light on purpose (Hydra and the schemas; no torch, no Ray): the CLI checks a
command line, and starts a local Ray for the run, before the heavy imports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from dimat.config import register


class ConfigError(ValueError):
    """A configuration that cannot run; the message (one line) names the setting and the fix."""


def conf_dir() -> Path:
    """The config folder: shipped inside the package (a wheel), or `conf/` beside it (a checkout)."""
    here = Path(__file__).resolve().parent
    for d in (here / "conf", here.parent / "conf"):
        if (d / "config.yaml").is_file():
            return d
    raise FileNotFoundError(f"dimat's config folder is missing (looked in {here / 'conf'} and {here.parent / 'conf'})")


def compose(overrides: Sequence[str] = (), *, config_dir: str | os.PathLike | None = None) -> DictConfig:
    """The config `python -m dimat <overrides>` composes (same defaults, same checks).

    `config_dir`: a folder of your own option YAMLs searched too (the CLI's `-cd DIR`), e.g.
    `myconf/algorithm/trimmed_mean.yaml` for `algorithm=trimmed_mean`.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    overrides = list(overrides)
    if config_dir is not None:
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    try:
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app (the CLI): its search path
            return hydra_compose(config_name="config", overrides=overrides)
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except Exception as e:  # noqa: BLE001 - Hydra's and OmegaConf's composition errors
        if type(e).__module__.split(".")[0] not in ("hydra", "omegaconf"):
            raise
        raise ConfigError(explain(e)) from e


def explain(e: BaseException) -> str:
    """A Hydra/OmegaConf composition error as one line naming the setting and the fix."""
    text, cause = str(e), e.__cause__
    first = text.splitlines()[0] if text else type(e).__name__
    if first.startswith("Could not override '") and cause is not None:
        key = first.split("'")[1]
        owner = str(cause).splitlines()[0]
        schema = owner.rsplit("'", 2)[-2] if owner.count("'") >= 4 else "its schema"
        *parents, leaf = key.split(".")
        guess = _did_you_mean(leaf, _schema_keys(schema))
        if not parents:  # a top-level setting, not a group's option
            hint = f": did you mean {guess}?" if guess else ""
            return f"{key} is not a setting of dimat{hint} (`python -m dimat --cfg job` lists them all)"
        group = parents[0]
        custom = conf_dir() / group / "custom.yaml"
        own = (f"; for your own component: {group}=custom {group}._target_=... +{key}=..."
               if custom.is_file() and "_target_" in custom.read_text() else "")
        hint = f"did you mean {'.'.join(parents)}.{guess}? Otherwise " if guess else ""
        article = "an" if group[0] in "aeiou" else "a"
        return (f"{key} is not an option of this {group} ({schema}): {hint}drop it, or choose {article} {group} that "
                f"takes it (see conf/{group}/{own})")
    if "Could not find '" in first:
        missing = first.split("Could not find '")[1].split("'")[0]
        group, _, name = missing.rpartition("/")
        lines = text.splitlines()
        options = [ln.strip() for ln in lines[lines.index(f"Available options in '{group}':") + 1:]
                   if ln.startswith("\t")] if f"Available options in '{group}':" in lines else []
        options = [o for o in options if not o.startswith("provider=")][:40]
        guess = _did_you_mean(name, options)
        hint = f"did you mean {group}={guess}? The options: " if guess else "use one of "
        return f"{group}={name} is unknown: {hint}{', '.join(options) or '(none found)'}"
    if first.startswith("Error merging override ") and cause is not None:
        override = first[len("Error merging override "):]
        return f"{override}: {str(cause).splitlines()[0]}"
    return first


def _schema_keys(name: str) -> list[str]:
    """The fields of the typed schema called `name` (the top-level Config, or any group option's)."""
    import dataclasses

    from dimat import config

    cls = getattr(config, name, None)
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _did_you_mean(word: str, choices: Sequence[str]) -> str | None:
    """The choice `word` is a near miss of, if any."""
    import difflib

    close = difflib.get_close_matches(word, [c for c in choices if not c.startswith("_")], n=1, cutoff=0.6)
    return close[0] if close else None
