"""The documentation: the site builds in strict mode, every command of the getting-started page and the tutorial
runs as written, the options reference covers every key of every schema, and the README stays short."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from dimat import config as C
from dimat import reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NO_MKDOCS_2_WARNING"] = "1"
    return env


def test_the_site_builds_strictly(tmp_path):
    """Broken links, missing pages, snippets or API references fail the build."""
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    site = tmp_path / "site"
    options = (site / "guide" / "algorithm" / "index.html").read_text()
    assert "algorithm=choco" in options and "gamma" in options  # generated from the schemas
    tutorial = re.sub(r"<[^>]+>", "", (site / "tutorial" / "index.html").read_text())
    assert "def spirals(" in tutorial and "class TrimmedMean(" in tutorial  # examples/ included, not retyped
    assert "weight_matching" in (site / "api" / "index.html").read_text()
    assert (site / "results" / "schedules" / "acc_vs_bytes.png").is_file()  # bench/results/ served with the site
    assert not (site / "hooks.py").exists()
    for picture in ("topologies.png", "round.png", "alignment.png"):  # drawn by dimat's code at build time
        assert (site / "pictures" / picture).stat().st_size > 10_000


def commands(page: Path) -> list[str]:
    """The lines of the page's ```bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _newest(folder: Path) -> Path:
    runs = [p.parent for p in folder.glob("*/*/config.yaml")] or list(folder.glob("*/*"))
    return max(runs, key=lambda p: p.stat().st_mtime)


def run_page(page: Path, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Every command of a page, as written: `python` is this interpreter, `cd DIR` changes the folder of the
    commands after it, and `<date>/<time>` is the newest run (or sweep) folder the page's commands wrote."""
    done = []
    for line in commands(page):
        if line.startswith("cd "):
            cwd = cwd / line[3:].strip()
            continue
        for kind in ("outputs", "multirun"):
            if f"{kind}/<date>/<time>" in line:
                line = line.replace(f"{kind}/<date>/<time>", str(_newest(cwd / kind)))
        assert line.startswith("python "), f"{page.name}: a command the test cannot run: {line}"
        line = shlex.quote(sys.executable) + line[len("python"):]
        p = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=300)
        assert p.returncode == 0, f"{page.name}: {line}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        done.append(p)
    return done


@pytest.mark.timeout(600)
def test_every_command_of_getting_started_runs(tmp_path):
    page = DOCS / "getting-started.md"
    done = run_page(page, tmp_path)
    assert len(done) == len(commands(page)) >= 8
    refused = next(p for p, c in zip(done, commands(page)) if "agnets" in c)
    assert "refused, as it should be" in refused.stdout and "agents" in refused.stderr  # the one-line error
    resumed = _newest(tmp_path / "outputs")
    rounds = [json.loads(line)["round"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert max(rounds) == 4  # resume=... rounds=4 continued the 2-round run
    report = (_newest(tmp_path / "multirun") / "report.md").read_text()
    assert "algorithm=dsgd" in report and "algorithm=dimat" in report


@pytest.mark.timeout(600)
def test_every_command_of_the_tutorial_runs(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    page = DOCS / "tutorial.md"
    done = run_page(page, tmp_path)
    assert len(done) == 3
    assert all("trimmed_mean" in p.stdout or "final accuracy" in p.stdout for p in done)


def test_the_options_reference_covers_every_key_with_its_meaning():
    """Every key of every schema has a comment (the reference's meaning column), and every option YAML is listed."""
    classes = [c for group in C.SCHEMAS.values() for c in group.values()]
    classes += [*reference.SHARED.values(), *reference.NESTED.values(), C.Config]
    missing = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name.startswith("_") or dataclasses.is_dataclass(hints.get(f.name)) or f.name in C.GROUPS + (
                    "compress", "network"):
                continue
            if not reference.comments(cls).get(f.name):
                missing.append(f"{cls.__name__}.{f.name}")
    assert not missing, f"keys without a comment in dimat/config.py: {missing}"
    for group in (*C.GROUPS, "compress", "network"):
        text = reference.group_reference(group)
        for option in reference.options(group):
            assert f"`{group}={option}`" in text
    assert "| `lr` | float | `0.05` |" in reference.group_reference("algorithm")
    assert "`bandwidth=1e+08`" in reference.group_reference("network")  # the wan preset's own value


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
