"""Dataset loaders: digits (bundled with scikit-learn), Fashion-MNIST / MNIST (IDX
files), CIFAR-10/100 (python pickle batches) and a synthetic Gaussian task.

Each loader returns a :class:`Dataset` of raw arrays (images ``[N, C, H, W]``);
:func:`prepare_dataset` is what a run then does to any loader's dataset, a
user's included: a class-stratified subsample, the per-channel standardisation
the dataset asks for, float32 inputs and int64 labels. No torchvision: the file
formats are simple enough to read with numpy.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATASETS: tuple[str, ...] = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic")

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SYNTHETIC_OPTIONS = frozenset({"n_train", "n_test", "num_classes", "shape", "noise"})
_TV_DIRS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}  # torchvision's raw-file layout
_CIFAR = {  # name -> (folder inside root, train files, test files, label key)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels"),
}
_HINTS = {
    "fashion_mnist": "install it with `apt-get install dataset-fashion-mnist` or set data.root=DIR holding the IDX files",
    "mnist": "download the 4 IDX .gz files from the MNIST site (http://yann.lecun.com/exdb/mnist/) "
    "into DIR and set data.root=DIR",
    "cifar10": "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "extract it and set data.root=DIR",
    "cifar100": "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "extract it and set data.root=DIR",
}


class DatasetNotFound(FileNotFoundError):
    """A dataset's files are missing; the message (one line) says where we looked and how to get them."""


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array comparison has no single truth value
class Dataset:
    """A train/test split held in memory: what a `data._target_` loader returns.

    ``x_*``: inputs ``[N, ...]`` (images ``[N, C, H, W]``), any numeric dtype; dimat hands float32 to the
    models. ``y_*``: integer labels in ``[0, num_classes)``. ``normalize=True`` asks dimat to standardise
    every channel (axis 1) with the mean and standard deviation of the training set it keeps (after
    ``data.train_samples``), as the built-in loaders do; ``False`` leaves the inputs as given.
    """

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    num_classes: int
    normalize: bool = False

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"dataset {self.name}: inputs and labels differ in length")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


def prepare_dataset(ds: Dataset, *, train_samples: int | None = None, test_samples: int | None = None,
                    seed: int = 0) -> Dataset:
    """What dimat does to any loader's dataset: check it, keep a class-stratified random subset of
    ``train_samples`` / ``test_samples`` (chosen by ``seed``), standardise it if it asks, and hand
    float32 inputs and int64 labels on."""
    if not isinstance(ds, Dataset):
        raise TypeError(f"the data loader returned {type(ds).__name__}, not a dimat.data.Dataset: "
                        "return Dataset(name, x_train, y_train, x_test, y_test, num_classes)")
    for split in ("train", "test"):
        y = np.asarray(getattr(ds, f"y_{split}"))
        if y.ndim != 1 or (len(y) and not np.issubdtype(y.dtype, np.integer)):
            raise ValueError(f"dataset {ds.name}: y_{split} must be a 1-d array of integer labels, "
                             f"got {y.dtype} of shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= ds.num_classes):
            raise ValueError(f"dataset {ds.name}: y_{split} holds labels in [{y.min()}, {y.max()}] but "
                             f"num_classes={ds.num_classes}: labels must be 0..num_classes-1")
    if len(ds.y_train) == 0 or len(ds.y_test) == 0:
        raise ValueError(f"dataset {ds.name} has an empty train or test split: give it samples")
    rng = np.random.default_rng(seed)
    xtr, ytr = _subsample(ds.x_train, np.asarray(ds.y_train), train_samples, rng)
    xte, yte = _subsample(ds.x_test, np.asarray(ds.y_test), test_samples, rng)
    if ds.normalize:
        xtr, xte = _normalise(xtr, xte)
    else:
        xtr, xte = (np.ascontiguousarray(x, dtype=np.float32) for x in (xtr, xte))
    return Dataset(ds.name, xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), int(ds.num_classes))


def load_dataset(name: str, root: str | None = None, *, train_samples: int | None = None,
                 test_samples: int | None = None, seed: int = 0, **kw: Any) -> Dataset:
    """A built-in dataset by name (one of :data:`DATASETS`), prepared as a run prepares it.

    ``root`` applies to the file datasets (fashion_mnist, mnist, cifar10, cifar100), ``kw`` to
    ``synthetic`` only (``n_train``, ``n_test``, ``num_classes``, ``shape``, ``noise``; its draw uses
    ``seed`` too).
    """
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if kw and key != "synthetic":
        raise TypeError(f"dataset {key} takes no options, got {', '.join(sorted(kw))}")
    unknown = sorted(kw.keys() - _SYNTHETIC_OPTIONS)
    if unknown:
        raise TypeError(f"dataset synthetic got unknown options {', '.join(unknown)}: "
                        f"it takes {', '.join(sorted(_SYNTHETIC_OPTIONS))}")
    if root is not None and key not in _HINTS:
        raise TypeError(f"dataset {key} reads no files: drop root")
    loader = LOADERS[key]
    raw = loader(seed=seed, **kw) if key == "synthetic" else loader(root) if key in _HINTS else loader()
    return prepare_dataset(raw, train_samples=train_samples, test_samples=test_samples, seed=seed)


# --------------------------------------------------------------------------- sources

def digits() -> Dataset:
    """scikit-learn's 8x8 digits (1,437 train / 360 test, a fixed stratified split)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / 16.0  # pixel values are 0..16
    # fixed random_state: the split is part of the dataset, not of the experiment's seed
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
    return Dataset("digits", xtr, ytr, xte, yte, 10, normalize=True)


def synthetic(n_train: int = 512, n_test: int = 256, num_classes: int = 4,
              shape: tuple[int, ...] | list[int] = (1, 8, 8), noise: float = 1.0, seed: int = 0) -> Dataset:
    """Gaussian blobs around random class means: separable enough to learn in a few steps."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    means = rng.normal(0.0, 1.0, (num_classes, *shape)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes)  # balanced classes
        x = means[y] + noise * rng.normal(0.0, 1.0, (n, *shape)).astype(np.float32)
        return x, y

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Dataset("synthetic", xtr, ytr, xte, yte, num_classes, normalize=True)


def _candidates(name: str, root: str | None, sub: str | None) -> list[Path]:
    """Folders to search, in order (``sub``: the archive's folder name, tried inside each)."""
    if root is not None:
        r = Path(root).expanduser()
        dirs = [r, r / name]
        if name in _TV_DIRS:
            dirs.append(r / _TV_DIRS[name] / "raw")
    else:
        dirs = [Path("/usr/share/datasets/fashion-mnist")] if name == "fashion_mnist" else []
        dirs += [Path.home() / ".cache" / "dimat" / name, Path.cwd() / "data" / name]
    if sub is not None:
        dirs = [p for d in dirs for p in (d, d / sub)]
    return dirs


def _not_found(name: str, dirs: list[Path], what: str) -> DatasetNotFound:
    return DatasetNotFound(f"{name} not found: looked in {', '.join(map(str, dirs))} for {what}; {_HINTS[name]}")


def fashion_mnist(root: str | None = None) -> Dataset:
    """Fashion-MNIST from Debian's dataset-fashion-mnist or the four IDX files under ``root``."""
    return _idx_dataset("fashion_mnist", root)


def mnist(root: str | None = None) -> Dataset:
    """MNIST from the four IDX files (gzip or not) under ``root`` (or root/MNIST/raw)."""
    return _idx_dataset("mnist", root)


def cifar10(root: str | None = None) -> Dataset:
    """CIFAR-10 from the python-pickle batches (cifar-10-batches-py/) under ``root``."""
    return _cifar("cifar10", root)


def cifar100(root: str | None = None) -> Dataset:
    """CIFAR-100 from the python-pickle files (cifar-100-python/) under ``root``."""
    return _cifar("cifar100", root)


def _check_root(name: str, root: str | None) -> None:
    if root is not None and not Path(root).expanduser().is_dir():  # a typo, not a search miss
        raise DatasetNotFound(f"{name} not found: data.root={root} does not exist; {_HINTS[name]}")


def _idx_dataset(name: str, root: str | None) -> Dataset:
    _check_root(name, root)
    dirs = _candidates(name, root, None)
    for d in dirs:
        paths = [_find_idx(d / f) for f in IDX_FILES]
        if all(paths):
            xtr, ytr, xte, yte = (read_idx(p) for p in paths)  # type: ignore[arg-type]
            return Dataset(name, xtr[:, None], ytr, xte[:, None], yte, 10, normalize=True)
    raise _not_found(name, dirs, ", ".join(f + "[.gz]" for f in IDX_FILES))


def _find_idx(stem: Path) -> Path | None:
    for p in (stem, stem.with_name(stem.name + ".gz")):
        if p.is_file():
            return p
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``): 2 zero bytes, dtype code, ndim, big-endian uint32 dims, data."""
    path = Path(path)
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    start = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(raw) - start != n * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} but the file holds {len(raw) - start} data bytes")
    return np.frombuffer(raw, dtype, count=n, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _cifar(name: str, root: str | None) -> Dataset:
    _check_root(name, root)
    sub, train_files, test_files, label_key = _CIFAR[name]
    dirs = _candidates(name, root, sub)
    for d in dirs:
        if all((d / f).is_file() for f in train_files + test_files):
            xtr, ytr = _cifar_batches(d, train_files, label_key)
            xte, yte = _cifar_batches(d, test_files, label_key)
            return Dataset(name, xtr, ytr, xte, yte, 10 if name == "cifar10" else 100, normalize=True)
    raise _not_found(name, dirs, ", ".join(train_files + test_files))


def _cifar_batches(d: Path, files: tuple[str, ...], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        # The CIFAR distribution *is* a pickle; these files come from the user's own
        # data folder, so unpickling them is trusting the user, not the network.
        with open(d / f, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], np.int64))
    return np.concatenate(xs), np.concatenate(ys)


LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": digits, "fashion_mnist": fashion_mnist, "mnist": mnist, "cifar10": cifar10, "cifar100": cifar100,
    "synthetic": synthetic,
}


# --------------------------------------------------------------------------- transforms
def stratified(x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``n`` samples, each class in proportion to its size (randomly chosen, original order kept)."""
    return _subsample(x, y, n, rng)


def _subsample(x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``n`` samples, each class in proportion to its size (randomly chosen, original order kept)."""
    if n is None or n >= len(y):
        return x, y
    if n < 1:
        raise ValueError(f"asked for {n} samples: need at least 1")
    perm = rng.permutation(len(y))
    # rank of each sample within its class (in the random order), as a fraction of the
    # class size: taking the n smallest fractions takes every class proportionally
    frac = np.empty(len(y))
    for c in np.unique(y):
        members = perm[y[perm] == c]
        frac[members] = (np.arange(len(members)) + rng.random()) / len(members)
    keep = np.sort(np.argsort(frac, kind="stable")[:n])
    return x[keep], y[keep]


def _normalise(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both splits with the train set's per-channel mean/std (as float32, C-contiguous).

    Raw pixel scale (0..255, 0..16) needs no separate division: the standardisation removes it.
    Everything is in place or in small chunks: full-size float temporaries (each one ~200 MB
    of fresh pages for Fashion-MNIST) are what made this step take seconds.
    """
    xtr = np.array(xtr, dtype=np.float32, order="C")  # always a fresh copy we may scale in place
    xte = np.array(xte, dtype=np.float32, order="C")
    for c in range(xtr.shape[1]):
        ch = xtr[:, c]
        mean = _chunked_sum(ch) / ch.size
        ch -= np.float32(mean)
        std = float(np.sqrt(_chunked_sum(ch, square=True) / ch.size))
        std = std if std > 1e-8 else 1.0  # a constant channel stays finite
        ch /= np.float32(std)
        xte[:, c] -= np.float32(mean)
        xte[:, c] /= np.float32(std)
    return xtr, xte


def _chunked_sum(x: np.ndarray, square: bool = False, chunk: int = 4096) -> float:
    """Sum (of squares) with float64 accumulation, ``chunk`` samples at a time."""
    total = 0.0
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk]
        total += float((np.square(part) if square else part).sum(dtype=np.float64))
    return total
