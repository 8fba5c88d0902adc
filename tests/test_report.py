"""`python -m dimat.report` turns run folders into a table and plots; loggers get the same records."""

from __future__ import annotations

from pathlib import Path

import pytest

from dimat import run
from dimat.report import main as report_main


def test_report_labels_runs_by_what_differs(tiny, tmp_path, capsys):
    for every in (1, 2):
        run(tiny("algorithm=dsgd", "backend=inprocess", f"schedule.every={every}", f"run.dir={tmp_path}/sweep/{every}"))
    assert report_main([str(tmp_path / "sweep")]) == 0
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "schedule.every=1" in md and "schedule.every=2" in md
    for png in ("acc_vs_round.png", "acc_vs_bytes.png", "consensus_vs_round.png"):
        assert (tmp_path / "sweep" / png).stat().st_size > 1000


def test_report_on_a_folder_without_runs_is_a_clear_error(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_trackers_receive_the_round_records(tiny, logger):
    pytest.importorskip(logger)
    res = run(tiny("algorithm=dsgd", "backend=inprocess", f"logger={logger}"))
    sub = "tensorboard" if logger == "tensorboard" else "mlruns"
    files = [p for p in Path(res.run_dir, sub).rglob("*") if p.is_file()]
    assert files, f"{logger} wrote nothing"
    if logger == "mlflow":
        # the metric history file of acc_mean has one line per evaluated round
        hist = [p for p in files if p.name == "acc_mean"]
        assert hist and len(hist[0].read_text().splitlines()) == len(res.records)


def test_report_labels_a_swept_component_by_its_option_and_reads_a_stopped_run(tiny, tmp_path):
    for schedule in ("periodic", "late"):
        run(tiny("algorithm=dsgd", "backend=inprocess", "rounds=3", "eval.every=1", f"schedule={schedule}",
                 f"run.dir={tmp_path}/sweep/{schedule}"))
    (tmp_path / "sweep" / "late" / "summary.json").unlink()  # as if it had been killed before the end
    assert report_main([str(tmp_path / "sweep")]) == 0
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "| schedule=periodic |" in md and "schedule._target_" not in md
    row = next(line for line in md.splitlines() if line.startswith("| schedule=late"))
    assert "(stopped at round 3)" in row and "—" not in row.split("|")[2]  # its last record's accuracy
