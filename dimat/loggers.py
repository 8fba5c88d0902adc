"""Experiment trackers users already have: the same per-round records, sent to TensorBoard or MLflow.

`logger=none` (the default) sends nothing; run folders always hold the
records. TensorBoard event files go to `<run dir>/tensorboard`; MLflow uses a
local file store at `<run dir>/mlruns` unless `MLFLOW_TRACKING_URI` is set.
"""

from __future__ import annotations

from pathlib import Path

from dimat.metrics import flatten_dict

LOGGERS = ("none", "tensorboard", "mlflow")


def _scalars(record: dict) -> dict[str, float]:
    """The numeric, non-list entries of a record."""
    return {
        k: float(v) for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and k != "round"
    }


class NoLogger:
    def log(self, record: dict) -> None:
        pass

    def summary(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NoLogger):
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", f"```\n{config}\n```")

    def log(self, record: dict) -> None:
        for k, v in _scalars(record).items():
            self.writer.add_scalar(k, v, global_step=record["round"])

    def summary(self, summary: dict) -> None:
        for k, v in _scalars(summary).items():
            self.writer.add_scalar(f"summary/{k}", v, global_step=0)

    def close(self) -> None:
        self.writer.close()


class MlflowLogger(NoLogger):
    def __init__(self, run_dir: Path, config: dict):
        import os

        import mlflow

        self.mlflow = mlflow
        if "MLFLOW_TRACKING_URI" not in os.environ:
            # a plain local file store needs no database server; MLflow 3 asks for this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment("dimat")
        self.run = mlflow.start_run(run_name=run_dir.name)
        flat = flatten_dict(config)
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def log(self, record: dict) -> None:
        self.mlflow.log_metrics(_scalars(record), step=record["round"])

    def summary(self, summary: dict) -> None:
        self.mlflow.log_metrics({f"summary.{k}": v for k, v in _scalars(summary).items()})

    def close(self) -> None:
        self.mlflow.end_run()


def check_logger(name: str) -> None:
    """Refuse an unknown logger, or one whose package is missing, before anything runs."""
    modules = {"none": None, "tensorboard": "tensorboard", "mlflow": "mlflow"}
    if name not in modules:
        raise ValueError(f"logger={name} is unknown: use one of {', '.join(LOGGERS)}")
    if modules[name]:
        import importlib.util

        if importlib.util.find_spec(modules[name]) is None:
            raise ValueError(f"logger={name} needs the {modules[name]} package: pip install 'dimat[{name}]'")


def build_logger(name: str, run_dir: Path, config: dict) -> NoLogger:
    check_logger(name)
    cls = {"none": NoLogger, "tensorboard": TensorBoardLogger, "mlflow": MlflowLogger}[name]
    return cls() if cls is NoLogger else cls(run_dir, config)
