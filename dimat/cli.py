"""`python -m dimat`: compose the Hydra config and call `run`; `resume=DIR` continues a run."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from dimat.config import Config, register

register()
# conf/ sits at the repository root, next to the package (an editable install or a checkout)
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _remove_empty(out: Path) -> None:
    """Remove the (empty) folder Hydra made for this run, and its empty parents below the cwd."""
    cwd = Path.cwd().resolve()
    for d in [out.resolve(), *out.resolve().parents]:
        if d == cwd or cwd not in d.parents or not d.is_dir() or any(d.iterdir()):
            break
        d.rmdir()


def _fail(message: str, out: Path) -> None:
    """Bad input: one line on stderr, exit code 2, and no run folder left behind."""
    _remove_empty(out)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def resumed_config(run_dir: str) -> DictConfig:
    """The run's own saved config, checked against the schema, pointing at its folder."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"resume={run_dir}: no config.yaml there; pass the folder of a dimat run")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    cfg.run.dir = str(Path(run_dir).resolve())
    cfg.resume = None
    return cfg


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from dimat.experiment import ConfigError, run

    out = Path(HydraConfig.get().runtime.output_dir)
    resume = cfg.resume is not None
    try:
        if resume:
            cfg = resumed_config(cfg.resume)
        elif cfg.run.dir is None:
            with open_dict(cfg):
                cfg.run.dir = str(out)
        result = run(cfg, resume=resume)
    except (ConfigError, FileNotFoundError) as e:
        _fail(str(e), out)
    if resume:
        _remove_empty(out)  # Hydra made a fresh folder that the resumed run does not use
    return result.summary.get("final_acc_mean")
