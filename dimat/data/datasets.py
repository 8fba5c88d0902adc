"""Datasets as normalised numpy arrays: digits, fashion_mnist, mnist, cifar10, cifar100, synthetic.

Images are float32 [N, C, H, W], normalised with the training set's
per-channel mean and std; labels int64. Readers support the standard on-disk
formats (IDX, gzip or not; CIFAR python-pickle batches). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS: tuple[str, ...] = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic")
DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TORCHVISION_DIR = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}
HOW_TO_GET = {
    "fashion_mnist": "install it with `apt-get install dataset-fashion-mnist` or set data.root=DIR holding the IDX files",
    "mnist": "download the 4 MNIST IDX files (train/t10k images and labels) into a folder and set data.root=DIR",
    "cifar10": "download cifar-10-python.tar.gz, extract it and set data.root=DIR holding cifar-10-batches-py/",
    "cifar100": "download cifar-100-python.tar.gz, extract it and set data.root=DIR holding cifar-100-python/",
}


class DatasetNotFound(FileNotFoundError):
    """A dataset is not on disk; the one-line message lists where we looked and how to get it."""

    def __init__(self, name: str, looked: list[Path], what: str):
        super().__init__(
            f"{name} not found: looked in {', '.join(map(str, looked))} for {what}; {HOW_TO_GET[name]}"
        )


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


# -- readers -------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzip): big-endian header, then the array (uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(name: str, root: str | None) -> Path:
    if root is not None:
        r = Path(root).expanduser()
        candidates = [r, r / name, r / TORCHVISION_DIR[name] / "raw"]
    else:
        candidates = [Path.home() / ".cache" / "dimat" / name, Path("data") / name]
        if name == "fashion_mnist":
            candidates.insert(0, Path(DEBIAN_FASHION))
    for d in candidates:
        if all(_idx_path(d, f) is not None for f in IDX_FILES):
            return d
    raise DatasetNotFound(name, candidates, f"{IDX_FILES[0]}[.gz] and its 3 companions")


def _idx_path(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def load_idx_dataset(name: str, root: str | None) -> tuple[np.ndarray, ...]:
    d = _find_idx(name, root)
    xtr, ytr, xte, yte = (read_idx(_idx_path(d, f)) for f in IDX_FILES)
    return xtr[:, None], ytr, xte[:, None], yte


def _unpickle(path: Path) -> dict:
    # CIFAR's own distribution format: files the user downloaded and chose to trust
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def load_cifar(name: str, root: str | None) -> tuple[np.ndarray, ...]:
    sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    base = Path(root or "data").expanduser()
    candidates = [base / sub, base, base / name / sub]
    first = "data_batch_1" if name == "cifar10" else "train"
    folder = next((d for d in candidates if (d / first).is_file()), None)
    if folder is None:
        raise DatasetNotFound(name, candidates, first)
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    test_file = "test_batch" if name == "cifar10" else "test"
    key = b"labels" if name == "cifar10" else b"fine_labels"

    def read(files):
        batches = [_unpickle(folder / f) for f in files]
        x = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
        return x, np.concatenate([np.asarray(b[key]) for b in batches])

    return (*read(train_files), *read([test_file]))


def load_digits_arrays(seed: int = 0) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)[:, None]  # [N, 1, 8, 8], values 0..16
    # a fixed split: the test set is the same whatever the experiment's seed
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
    return xtr, ytr, xte, yte


def synthetic(n_train: int = 512, n_test: int = 256, num_classes: int = 4, shape=(1, 8, 8), noise: float = 1.0,
              seed: int = 0) -> tuple[np.ndarray, ...]:
    """Gaussian class clusters around random centres: learnable, deterministic, tiny."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, *shape)).astype(np.float32) * 1.5

    def draw(n):
        y = np.arange(n) % num_classes
        rng.shuffle(y)
        return centres[y] + noise * rng.standard_normal((n, *shape)).astype(np.float32), y

    return (*draw(n_train), *draw(n_test))


# -- the public loader ---------------------------------------------------------
def _subsample(x: np.ndarray, y: np.ndarray, k: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic class-stratified subsample of k items (all of them if k is None or too big)."""
    if k is None or k >= len(y):
        return x, y
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    # interleave classes so every prefix is (nearly) stratified
    ranks = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        members = order[y[order] == c]
        ranks[members] = np.arange(len(members))
    keep = np.sort(order[np.lexsort((np.arange(len(order)), ranks[order]))][:k])
    return x[keep], y[keep]


def _normalise(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xtr, xte = xtr.astype(np.float32), xte.astype(np.float32)
    axes = (0, *range(2, xtr.ndim))
    mean = xtr.mean(axis=axes, keepdims=True)
    std = xtr.std(axis=axes, keepdims=True) + 1e-6
    return np.ascontiguousarray((xtr - mean) / std), np.ascontiguousarray((xte - mean) / std)


def load_dataset(name: str, root: str | None = None, *, train_samples: int | None = None,
                 test_samples: int | None = None, seed: int = 0, **kw) -> Dataset:
    """Load `name` as a normalised `Dataset` (see module docstring)."""
    if name not in DATASETS:
        raise ValueError(f"data={name} is unknown: use one of {', '.join(DATASETS)}")
    if kw and name != "synthetic":
        raise ValueError(f"data.options {sorted(kw)} are not used by data={name}: remove them")
    if root is not None and name not in ("synthetic", "digits") and not Path(root).expanduser().exists():
        raise DatasetNotFound(name, [Path(root)], "the folder data.root")
    if name == "digits":
        arrays = load_digits_arrays(seed)
    elif name in ("fashion_mnist", "mnist"):
        arrays = load_idx_dataset(name, root)
    elif name in ("cifar10", "cifar100"):
        arrays = load_cifar(name, root)
    else:
        arrays = synthetic(seed=seed, **kw)
    xtr, ytr, xte, yte = arrays
    ytr, yte = np.asarray(ytr, dtype=np.int64), np.asarray(yte, dtype=np.int64)
    xtr, ytr = _subsample(xtr, ytr, train_samples, seed)
    xte, yte = _subsample(xte, yte, test_samples, seed + 1)
    xtr, xte = _normalise(xtr, xte)
    num_classes = {"cifar100": 100}.get(name, int(max(ytr.max(), yte.max()) + 1))
    return Dataset(name, xtr, ytr, xte, yte, num_classes)
