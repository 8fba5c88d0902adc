"""`ray job submit` route: a private Ray head on loopback runs `python -m dimat` as a job, with a user's module."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_a_submitted_job_runs_an_experiment(tmp_path, monkeypatch):
    from ray.job_submission import JobStatus, JobSubmissionClient

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # everything on 127.0.0.1
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             _node_ip_address="127.0.0.1")  # our own head: ray.shutdown() below stops it
    try:
        client = JobSubmissionClient(f"http://127.0.0.1:{port}")
        run_dir = tmp_path / "job-run"
        # the job ships a user's package (examples/mylab) with --working-dir; its model runs on the actors
        submit = lambda: client.submit_job(
            entrypoint=f"{sys.executable} -m dimat backend.address=auto data=synthetic model=custom "
                       f"model._target_=mylab.models.ResidualMLP +model.width=8 agents=4 rounds=2 algorithm=dsgd "
                       f"run.progress=false run.dir={run_dir}",
            runtime_env={"working_dir": str(ROOT / "examples")},
        )
        for attempt in range(60):  # the job agent comes up a few seconds after the head
            try:
                job = submit()
                break
            except RuntimeError as e:
                if "No available agent" not in str(e) or attempt == 59:
                    raise
                time.sleep(1)
        deadline = time.time() + 300
        while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            assert time.time() < deadline, "job did not finish in 300 s"
            time.sleep(1)
        assert status == JobStatus.SUCCEEDED, client.get_job_logs(job)[-2000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["agents"] == 4 and summary["bytes_total"] > 0
        # ResidualMLP(width=8, blocks=2) on 64 inputs and 4 classes: stem, 2 × (up, down), head
        assert summary["model_bytes"] == 4 * ((64 * 8 + 8) + 2 * ((8 * 16 + 16) + (16 * 8 + 8)) + (8 * 4 + 4))
    finally:
        ray.shutdown()
