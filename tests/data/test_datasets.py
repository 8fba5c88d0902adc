"""Dataset readers: IDX and CIFAR files written here, digits, synthetic, the Debian Fashion-MNIST."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from dimat.data import Dataset, DatasetNotFound, load_dataset, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    """An IDX file: 0, 0, dtype code (0x08 = uint8), ndim, big-endian uint32 dims, data."""
    raw = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def write_mnist(folder: Path, n_train: int = 50, n_test: int = 20, compress: bool = True) -> tuple[np.ndarray, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10)
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for i, (name, arr) in enumerate(zip(names, arrays)):
        write_idx(folder / name, arr, compress=compress and i % 2 == 0)  # mix plain and gz
    return arrays


def write_cifar(folder: Path, hundred: bool) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    key = b"fine_labels" if hundred else b"labels"
    files = ("train", "test") if hundred else (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
    for f in files:
        batch = {b"data": rng.integers(0, 256, (8, 3072)).astype(np.uint8), key: list(range(8))}
        (folder / f).write_bytes(pickle.dumps(batch))


def _normalised(d: Dataset) -> None:
    assert d.x_train.dtype == np.float32 and d.x_train.flags.c_contiguous and d.x_test.flags.c_contiguous
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    axes = (0, 2, 3)
    np.testing.assert_allclose(d.x_train.mean(axes), 0, atol=1e-4)
    np.testing.assert_allclose(d.x_train.std(axes), 1, atol=1e-3)


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(24).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr, compress=False)
    write_idx(tmp_path / "b", arr, compress=True)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("layout", [".", "fashion_mnist", "FashionMNIST/raw"])
def test_idx_layouts(tmp_path: Path, layout: str) -> None:
    xtr, ytr, xte, yte = write_mnist(tmp_path / layout)
    d = load_dataset("fashion_mnist", str(tmp_path))
    assert d.x_train.shape == (50, 1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    assert np.array_equal(d.y_train, ytr) and np.array_equal(d.y_test, yte) and d.num_classes == 10
    _normalised(d)
    # normalisation is an affine map of the raw pixels, with the train statistics
    mean, std = xtr.mean(), xtr.std()
    np.testing.assert_allclose(d.x_test[:, 0], (xte - mean) / std, rtol=1e-4, atol=1e-4)


def test_mnist_plain_files_and_subsample(tmp_path: Path) -> None:
    write_mnist(tmp_path / "MNIST" / "raw", n_train=100, compress=False)
    d = load_dataset("mnist", str(tmp_path), train_samples=30, test_samples=10, seed=1)
    assert len(d.y_train) == 30 and len(d.y_test) == 10
    assert np.bincount(d.y_train).tolist() == [3] * 10  # stratified
    again = load_dataset("mnist", str(tmp_path), train_samples=30, test_samples=10, seed=1)
    assert np.array_equal(d.x_train, again.x_train)


def test_not_found_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound) as e:
        load_dataset("fashion_mnist", str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("fashion_mnist not found: looked in ")
    for place in (tmp_path, tmp_path / "fashion_mnist", tmp_path / "FashionMNIST" / "raw"):
        assert str(place) in msg
    assert "train-images-idx3-ubyte[.gz]" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(DatasetNotFound, match="MNIST site"):
        load_dataset("mnist", str(tmp_path))
    with pytest.raises(DatasetNotFound, match="cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(DatasetNotFound, match=r"data.root=\S*nowhere does not exist") as e:
        load_dataset("cifar100", str(tmp_path / "nowhere"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("name", "folder", "n_train", "classes"),
                         [("cifar10", "cifar-10-batches-py", 40, 10), ("cifar100", "cifar-100-python", 8, 100)])
def test_cifar(tmp_path: Path, name: str, folder: str, n_train: int, classes: int) -> None:
    write_cifar(tmp_path / folder, hundred=name == "cifar100")
    d = load_dataset(name, str(tmp_path))
    assert d.x_train.shape == (n_train, 3, 32, 32) and d.x_test.shape == (8, 3, 32, 32)
    assert d.num_classes == classes and d.y_test.tolist() == list(range(8))
    _normalised(d)


def test_digits() -> None:
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert (len(d.y_train), len(d.y_test)) == (1437, 360)
    assert set(np.unique(d.y_test)) == set(range(10))
    _normalised(d)
    assert np.array_equal(load_dataset("digits", seed=5).x_train, d.x_train)  # the split ignores the seed
    assert "num_classes=10" in repr(d)


def test_synthetic_is_seeded_and_learnable() -> None:
    d = load_dataset("synthetic", seed=3, n_train=200, n_test=100, num_classes=4, shape=(2, 4, 4))
    assert d.x_train.shape == (200, 2, 4, 4) and d.num_classes == 4
    assert np.array_equal(d.x_train, load_dataset("synthetic", seed=3, n_train=200, n_test=100,
                                                  num_classes=4, shape=(2, 4, 4)).x_train)
    assert not np.array_equal(d.x_train, load_dataset("synthetic", seed=4, n_train=200, n_test=100,
                                                      num_classes=4, shape=(2, 4, 4)).x_train)
    # nearest class mean (of the train set) classifies the test set well
    means = np.stack([d.x_train[d.y_train == c].mean(0) for c in range(4)]).reshape(4, -1)
    dist = ((d.x_test.reshape(100, 1, -1) - means) ** 2).sum(-1)
    assert (dist.argmin(1) == d.y_test).mean() > 0.9


def test_bad_names_and_options() -> None:
    with pytest.raises(ValueError, match="digits, fashion_mnist"):
        load_dataset("imagenet")
    with pytest.raises(TypeError, match="n_train"):
        load_dataset("digits", n_train=5)
    with pytest.raises(TypeError, match="unknown options n_trian: it takes n_test, n_train"):
        load_dataset("synthetic", n_trian=5)
    with pytest.raises(TypeError, match="reads no files"):
        load_dataset("digits", root="/does/not/matter")  # refused, not ignored
    d = load_dataset("SYNTHETIC")  # names are case/dash-insensitive
    assert d.name == "synthetic"
    with pytest.raises(AttributeError):
        d.num_classes = 3  # type: ignore[misc]  # frozen


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian() -> None:
    d = load_dataset("fashion_mnist", train_samples=500)
    assert d.x_train.shape == (500, 1, 28, 28) and len(d.y_test) == 10000
    assert np.bincount(d.y_train).tolist() == [50] * 10
    full = load_dataset("fashion_mnist")
    assert (len(full.y_train), len(full.y_test)) == (60000, 10000)
