"""The prepared GPU check runs end to end on the CPU (bench/gpu.sh --dry-run): slow, so run with -m slow."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_gpu_script_runs_dry_on_the_cpu():
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    lines = [ln for ln in p.stdout.splitlines() if ln[:2] in ("1 ", "2 ", "3 ", "4 ", "5 ")]
    assert len(lines) == 5 and "same bytes and accuracies" in lines[-1], p.stdout
