"""Per-round records on the driver: accuracies, consensus distance, bytes; run-folder files.

Everything here is arithmetic on what hosts report (correct counts per class,
squared distances, transfers actually made) plus the writers of
`metrics.jsonl` and `summary.json`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SERVER = -1  # the server of a server phase (the driver), as a transfer's source or destination


def accuracy(correct: np.ndarray, test_counts: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Accuracy from correct counts per class; restricted to the classes in `mask` if given."""
    if mask is not None:
        correct, test_counts = correct[mask], test_counts[mask]
    total = test_counts.sum()
    return float(correct.sum() / total) if total else float("nan")


@dataclass
class ByteLedger:
    """Bytes actually sent and received per agent, from reported transfers."""

    n: int
    sent: np.ndarray = field(init=False)
    recv: np.ndarray = field(init=False)

    def __post_init__(self):
        self.sent = np.zeros(self.n, dtype=np.int64)
        self.recv = np.zeros(self.n, dtype=np.int64)

    server: int = 0  # bytes a server (the driver, in a server phase) sent; agents' uploads are in `sent`

    def add(self, transfers: list[tuple[int, int, int]]) -> int:
        """Record (source, destination, bytes) transfers (SERVER = -1 for a server); returns their total."""
        total = 0
        for src, dst, nbytes in transfers:
            if src == SERVER:
                self.server += nbytes
            else:
                self.sent[src] += nbytes
            if dst != SERVER:
                self.recv[dst] += nbytes
            total += nbytes
        return total

    @property
    def total(self) -> int:
        return int(self.sent.sum()) + self.server

    def state(self) -> dict:
        return {"sent": self.sent.tolist(), "recv": self.recv.tolist(), "server": self.server}

    def load(self, state: dict) -> None:
        self.sent = np.asarray(state["sent"], dtype=np.int64)
        self.recv = np.asarray(state["recv"], dtype=np.int64)
        self.server = int(state.get("server", 0))


class RunWriter:
    """Appends one JSON line per round and writes the summary, each write atomic."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"

    def append(self, record: dict) -> None:
        """One line, whole or not at all: a write that fails part way is cut back to the previous lines."""
        line = json.dumps(_plain(record)) + "\n"
        with guarded(self.metrics_path), open(self.metrics_path, "a") as f:
            start = f.tell()
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                f.truncate(start)
                raise

    def write_json(self, name: str, obj: dict) -> None:
        write_atomic(self.dir / name, json.dumps(_plain(obj), indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name in the same folder, then rename: never half a file."""
    replace_atomic(path, lambda tmp: tmp.write_text(text))


def replace_atomic(path: Path, write) -> None:
    """`write(tmp)` to a temporary name beside `path`, then rename it into place: `path` is the old file or the
    new one, never half of one; a failed write leaves no temporary file and, where the disk is full, raises
    OSError(ENOSPC) naming `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with guarded(path):
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def guarded(path: Path):
    """Turn a failed write on a full disk into OSError(ENOSPC) naming `path` (torch.save reports it as a bare
    RuntimeError from its zip writer)."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC and not e.filename:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise
    except RuntimeError as e:
        if disk_full(Path(path).parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise


def disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the device of `folder` has less than `margin` bytes free."""
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def flatten_dict(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        out.update(flatten_dict(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _plain(obj):
    """JSON-ready: numpy scalars and arrays to Python numbers and lists; NaN to null."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
