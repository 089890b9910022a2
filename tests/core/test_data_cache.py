"""The decoded-data cache: built once, memory-mapped afterwards, rebuilt when damaged."""

import numpy as np

from core.data import cache_dir, load_mnist


def _entry():
    entries = [p for p in (cache_dir() / "decoded").iterdir() if p.name.startswith("mnist-") and "5k" not in p.name]
    assert len(entries) == 1
    return entries[0]


def test_second_load_is_memory_mapped_and_identical(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_SWEEP_CACHE", str(tmp_path))
    first = load_mnist(mnist_dir, n_train=1000, n_validation=200, n_test=300)
    assert not isinstance(first.train.X, np.memmap)  # decoded this time
    second = load_mnist(mnist_dir, n_train=1000, n_validation=200, n_test=300)
    assert isinstance(second.train.X.base, np.memmap) or isinstance(second.train.X, np.memmap)
    for part in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(first, part).X, getattr(second, part).X)
        np.testing.assert_array_equal(getattr(first, part).y, getattr(second, part).y)
    assert second.train.X.shape == (1000, 784) and second.test.y.shape == (300,)
    assert not second.train.X.flags.writeable  # shared pages are read-only
    assert {p.name for p in _entry().iterdir()} == {
        f"{part}_{a}.npy" for part in ("train", "validation", "test") for a in "Xy"
    }


def test_a_damaged_cache_entry_is_built_again(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_SWEEP_CACHE", str(tmp_path))
    good = load_mnist(mnist_dir, n_train=50, n_validation=10, n_test=10)
    (_entry() / "test_X.npy").write_bytes(b"garbage")
    again = load_mnist(mnist_dir, n_train=50, n_validation=10, n_test=10)
    np.testing.assert_array_equal(good.test.X, again.test.X)
    mapped = load_mnist(mnist_dir, n_train=50, n_validation=10, n_test=10)  # the entry was rebuilt
    assert isinstance(mapped.test.X.base, np.memmap) or isinstance(mapped.test.X, np.memmap)
