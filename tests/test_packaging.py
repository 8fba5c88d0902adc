"""A non-editable install carries conf/ inside the package: `dimat` and `python -m dimat` work from anywhere."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_a_wheel_in_a_fresh_virtualenv_runs_from_another_directory(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("dimat", "topologies", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "-q", "wheel", "--no-deps", "--no-build-isolation", str(src), "-w",
                    str(tmp_path / "wheel")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("dimat-*.whl")
    # a fresh virtualenv that sees this one's dependencies (torch, ray, ...) but not its editable dimat
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    py = venv / "bin" / "python"
    fresh_site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                                capture_output=True, text=True).stdout.strip()
    (Path(fresh_site) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "-q", "install", "--no-deps", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import dimat.api as a; print(a.__file__); print(a.conf_dir())"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=120)
    module, conf = where.stdout.split()
    assert module.startswith(fresh_site) and conf == str(Path(fresh_site) / "dimat" / "conf"), where.stdout
    args = ["data=synthetic", "model.hidden=[16]", "agents=3", "rounds=1", "backend=inprocess", "run.progress=false"]
    for i, cmd in enumerate(([str(py), "-m", "dimat"], [str(venv / "bin" / "dimat")])):
        p = subprocess.run([*cmd, *args, f"run.dir={elsewhere}/run{i}"], cwd=elsewhere, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        assert json.loads((elsewhere / f"run{i}" / "summary.json").read_text())["agents"] == 3
    # every YAML of conf/ is in the wheel, and every experiment preset composes from it
    presets = sorted(str(p.relative_to(ROOT / "conf" / "experiment").with_suffix(""))
                     for p in (ROOT / "conf" / "experiment").rglob("*.yaml"))
    code = ("import sys, dimat\nfor name in sys.argv[1:]:\n    dimat.compose([f'experiment={name}'])\n"
            "print(len(sys.argv) - 1)")
    p = subprocess.run([str(py), "-c", code, *presets], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.split()[-1] == str(len(presets)), p.stderr[-2000:]
    # the console script imports a user's module from the working directory, as `python -m dimat` does
    (elsewhere / "userlab.py").write_text("from dimat.models import mlp as tiny_mlp\n")
    p = subprocess.run([str(venv / "bin" / "dimat"), *[a for a in args if not a.startswith("model.")], "model=custom",
                        "model._target_=userlab.tiny_mlp",
                        "+model.hidden=[8]", f"run.dir={elsewhere}/user"], cwd=elsewhere, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    # its help is dimat's: the groups a user chooses from, no Hydra internals
    p = subprocess.run([str(venv / "bin" / "dimat"), "--help"], cwd=elsewhere, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "model:" in p.stdout and "experiment:" in p.stdout, p.stdout
    assert "schema" not in p.stdout and "Powered by Hydra" not in p.stdout
