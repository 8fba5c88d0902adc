"""`python -m dimat` (or `dimat`): compose the Hydra config and call `dimat.run`; `resume=DIR` continues a run.

Bad input — a key no option takes, an unknown option, a value of the wrong
type, or anything `dimat.run` refuses — is one line on stderr, exit code 2, and
no run folder. The overrides are composed once before Hydra starts so that
composition errors get that one line too (multirun sweeps and Hydra's own flags
are left to Hydra).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from dimat.api import conf_dir
from dimat.components import ConfigError
from dimat.config import register

register()
CONF_DIR = str(conf_dir())


def _remove_empty(out: Path) -> None:
    """Remove the (empty) folder Hydra made for this run, and its empty parents below the cwd."""
    cwd = Path.cwd().resolve()
    for d in [out.resolve(), *out.resolve().parents]:
        if d == cwd or cwd not in d.parents or not d.is_dir() or any(d.iterdir()):
            break
        d.rmdir()


def _fail(message: str, out: Path | None = None) -> None:
    """Bad input: one line on stderr, exit code 2, and no run folder left behind."""
    if out is not None:
        _remove_empty(out)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def precheck(args: list[str]) -> str | None:
    """Compose the command line's overrides as the run will; the one-line error, or None."""
    from dimat.api import compose

    overrides, config_dir, it = [], None, iter(args)
    for a in it:
        if a in ("-cd", "--config-dir"):
            config_dir = next(it, None)
        elif a.startswith("--config-dir="):
            config_dir = a.split("=", 1)[1]
        elif a.startswith("-"):
            return None  # --help, --cfg, -m, ...: Hydra's own business
        elif a.startswith("hydra.") and not a.startswith("hydra.searchpath"):
            continue
        else:
            overrides.append(a)
    try:
        compose(overrides, config_dir=config_dir)
    except ConfigError as e:
        return str(e)
    return None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _app(cfg: DictConfig) -> float | None:
    from dimat.api import run

    out = Path(HydraConfig.get().runtime.output_dir)
    resume = cfg.resume is not None
    try:
        if not resume and cfg.run.dir is None:
            with open_dict(cfg):
                cfg.run.dir = str(out)
        result = run(cfg)
    except ConfigError as e:
        _fail(str(e), out)
    if resume:
        _remove_empty(out)  # Hydra made a fresh folder that the resumed run does not use
    return result.summary.get("final_acc_mean")


def main() -> None:
    error = precheck(sys.argv[1:])
    if error is not None:
        _fail(error)
    _app()
