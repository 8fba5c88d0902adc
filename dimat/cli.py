"""`python -m dimat` (or `dimat`): compose the Hydra config and call `dimat.run`; `resume=DIR` continues a run.

Bad input — a key no option takes, an unknown option, a value of the wrong
type, or anything `dimat.run` refuses — is one line on stderr, exit code 2, and
no run folder. The overrides are composed once before Hydra starts so that
composition errors get that one line too (multirun sweeps and Hydra's own flags
are left to Hydra). That composition is light (no torch, no Ray): when it says
the run starts a local Ray, Ray and the run's actors start on a thread from
there on (`dimat.runtime.prestart`), while the driver imports torch and builds
the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from dimat.config import register
from dimat.configure import ConfigError, compose, conf_dir
from dimat.runtime import prestart
from dimat.runtime.base import mark_cpus

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
    prestart.abandon(2)  # exits (a Ray started ahead for this run goes with it)


def precheck(args: list[str]) -> tuple[str | None, DictConfig | None]:
    """Compose the command line's overrides as the run will: (the one-line error or None, the config or None
    where Hydra's own flags leave composition to Hydra)."""
    overrides, config_dir, it, sweep = [], None, iter(args), False
    for a in it:
        if a in ("-cd", "--config-dir"):
            config_dir = next(it, None)
        elif a.startswith("--config-dir="):
            config_dir = a.split("=", 1)[1]
        elif a in ("-m", "--multirun"):
            sweep = True
        elif a.startswith("-"):
            return None, None  # --help, --cfg, ...: Hydra's own business
        elif a.startswith("hydra.") and not a.startswith("hydra.searchpath"):
            continue
        else:
            overrides.append(a)
    try:
        if sweep:  # every value of every swept key composes, before Hydra makes the sweep's folder
            return _precheck_sweep(overrides, config_dir), None
        return None, compose(overrides, config_dir=config_dir)
    except ConfigError as e:
        return str(e), None


def _precheck_sweep(overrides: list[str], config_dir: str | None) -> str | None:
    """The first sweep value that does not compose (each swept key's values with the others' first), as one
    line naming the job's override; None when they all do."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # noqa: BLE001 - Hydra's parse error: a malformed sweep
        return f"the sweep's overrides do not parse ({str(e).splitlines()[0]})"
    values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
              for o in parsed]
    keys = [o.input_line.split("=", 1)[0] for o in parsed]
    for i, vals in enumerate(values):
        for v in vals[1:] if len(vals) > 1 else vals:
            job = [f"{k}={v if j == i else vs[0]}" for j, (k, vs) in enumerate(zip(keys, values))]
            try:
                compose(job, config_dir=config_dir)
            except ConfigError as e:
                return f"{e} (sweep job with {keys[i]}={v})" if len(vals) > 1 else str(e)
    return None


RAY_BACKENDS = ("dimat.runtime.RayBackend", "dimat.runtime.ray_backend.RayBackend")


def start_ray_early(cfg: DictConfig) -> bool:
    """Start the local Ray and the actors of a run that will start them (`dimat.runtime.prestart`)."""
    backend = cfg.backend
    if cfg.resume is not None or backend.get("_target_") not in RAY_BACKENDS or backend.get("address"):
        return False
    prestart.start(int(cfg.agents), {k: backend.get(k) for k in prestart.KEYS})
    return True


def _stopped(run_dir: Path, out: Path, message: str, code: int, *, resumable: bool = True,
             keep: bool = False) -> None:
    """A run stopped part way (Ctrl-C, a host that failed, a full disk, divergence): one line saying why and
    whether it can be resumed. A new run stopped before its first checkpoint leaves nothing (unless `keep`: a
    resumed run's folder, a diverged run's records): the files it wrote are removed, and the folder where that
    empties it."""
    import shutil

    from dimat.experiment import RUN_FILES
    from dimat.runtime import checkpoint

    _remove_empty(out)
    can_resume = checkpoint.newest_complete(run_dir)[0] is not None
    if not can_resume and not keep and run_dir.is_dir():
        for name in (*RUN_FILES, "checkpoint.tmp"):
            path = run_dir / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
    if resumable and can_resume:
        message += f"; resume with: python -m dimat resume={run_dir}"
    elif resumable and not keep:
        message += "; it had no checkpoint yet, so nothing was kept: start it again"
    print(message, file=sys.stderr)
    prestart.abandon(code)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _app(cfg: DictConfig) -> float | None:
    import errno

    from dimat.api import run
    from dimat.experiment import Diverged
    from dimat.metrics import disk_full
    from dimat.runtime.base import HostFailure

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    resume = cfg.resume is not None
    if hc.mode == RunMode.MULTIRUN:  # a sweep: say which job this is before its output
        print(f"── job {hc.job.num}: {' '.join(hc.overrides.task) or '(defaults)'} ──", flush=True)
    run_dir = Path(cfg.resume if resume else cfg.run.dir or out).resolve()
    try:
        if not resume and cfg.run.dir is None:
            with open_dict(cfg):
                cfg.run.dir = str(out)
        result = run(cfg)
    except ConfigError as e:
        _fail(str(e), out)
    except KeyboardInterrupt:
        _stopped(run_dir, out, "interrupted", 130, keep=resume)
    except HostFailure as e:
        _stopped(run_dir, out, f"error: {e} (raise backend.timeout_s, or see the host's log)", 2, keep=resume)
    except Diverged as e:
        _stopped(run_dir, out, f"error: {e}", 2, resumable=False, keep=True)  # its records show how
    except OSError as e:
        if e.errno != errno.ENOSPC and not disk_full(run_dir if run_dir.exists() else run_dir.parent):
            raise
        _stopped(run_dir, out, f"error: no space left on the device of {e.filename or run_dir}: free some or give a "
                 "run.dir on another disk", 2, keep=resume)
    _remove_empty(out)  # Hydra's folder, when the run used another (resume=, run.dir=)
    return result.summary.get("final_acc_mean")


HELP = """dimat: decentralized deep learning by iterative merging and training.

usage: dimat [GROUP=OPTION ...] [KEY=VALUE ...]       (also: python -m dimat ...)
       dimat -m GROUP=A,B KEY=1,2 ...                 a sweep: one run per combination
       dimat resume=DIR [rounds=N]                    continue a run from its last checkpoint
       dimat --cfg job [overrides]                    print the composed config (every key and its value)
       python -m dimat.report DIR ...                 tables and plots of run folders

Groups and their options (conf/<group>/<option>.yaml):
{groups}

Examples:
  dimat                                            the default run: digits, 5 agents on a ring, DIMAT
  dimat model=cnn merge=activation agents=8 topology=torus
  dimat experiment=dimat_fashion_vit               a preset (conf/experiment/)
  dimat model=custom model._target_=mylab.nets.Net +model.width=32   your own model
"""


def print_help() -> None:
    """dimat's own --help: the groups a user chooses from (Hydra's would list internal schema groups)."""
    root = conf_dir()
    lines = []
    for group in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        options = sorted(str(f.relative_to(root / group).with_suffix("")) for f in (root / group).rglob("*.yaml"))
        lines.append(f"  {group}: {', '.join(options)}")
    print(HELP.format(groups="\n".join(lines)))


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print_help()
        return
    # the working directory is importable, as with `python -m dimat` (a user's module named by _target_)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    mark_cpus()  # the free CPUs are then read over the time the config and imports take, with no wait
    error, cfg = precheck(sys.argv[1:])
    if error is not None:
        _fail(error)
    if cfg is not None:
        start_ray_early(cfg)
    try:
        _app()
    finally:
        prestart.discard()  # the run did not take them over (it stopped first, or placed its actors otherwise)
