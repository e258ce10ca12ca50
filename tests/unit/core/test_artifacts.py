"""The files stages hand each other: the data set byte-reproducible, the history exact, a corrupt or missing
data set one line naming the file. Corrupt inputs as each stage meets them: tests/unit/stages/test_failures.py."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gdpipe.core.artifacts import Dataset, History
from gdpipe.core.command import InputError
from gdpipe.data import generate
from gdpipe.train import train
from support import committed_md5


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- data/dataset.npy ------------------------------------------------------------------------


def test_same_params_give_a_byte_identical_file(tmp_path, params):
    p = params({"data.noise_std": 0.3, "data.n_samples": 1000})
    generate(p.data).save(tmp_path / "a.npy")
    generate(p.data).save(tmp_path / "b.npy")
    assert sha256(tmp_path / "a.npy") == sha256(tmp_path / "b.npy")
    other = params({"data.noise_std": 0.3, "data.n_samples": 1000, "data.seed": 1})
    generate(other.data).save(tmp_path / "c.npy")
    assert sha256(tmp_path / "c.npy") != sha256(tmp_path / "a.npy")


@pytest.mark.parametrize("n", [1, 4, 1000, 123_457])
def test_saved_file_is_what_numpy_writes_and_loads_back_exactly(tmp_path, params, n):
    generated = generate(params({"data.noise_std": 1.0, "data.n_samples": n}).data)
    generated.save(tmp_path / "d.npy")
    # gdpipe writes every byte itself; they are the bytes of NumPy's own .npy writer, which any NumPy reads.
    np.save(tmp_path / "numpy.npy", np.stack([generated.x, generated.y]))
    assert (tmp_path / "d.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()
    loaded = Dataset.load(tmp_path / "d.npy")
    assert np.array_equal(loaded.x, generated.x) and np.array_equal(loaded.y, generated.y)
    assert loaded.x.dtype == np.float32 and loaded.x.flags.c_contiguous and loaded.y.flags.c_contiguous


def test_lesson_dataset_has_the_committed_bytes(tmp_path, params):
    """The bytes dvc.lock records for the lesson's data (md5), written by this process's Python and NumPy."""
    generate(params().data).save(tmp_path / "d.npy")
    assert hashlib.md5((tmp_path / "d.npy").read_bytes()).hexdigest() == committed_md5("data/dataset.npy")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable data set"),
        (b"\x93NUMPY\x01\x00 truncated", "not a readable data set"),
        (b"PK\x03\x04 a zip, as the old .npz", "not a readable data set"),
    ],
)
def test_corrupt_dataset_is_one_line_naming_the_file(tmp_path, content, message):
    (tmp_path / "d.npy").write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        Dataset.load(tmp_path / "d.npy")
    assert str(tmp_path / "d.npy") in str(err.value) and "\n" not in str(err.value)


def test_truncated_dataset_is_rejected(tmp_path, params):
    generate(params({"data.n_samples": 10_000}).data).save(tmp_path / "d.npy")
    whole = (tmp_path / "d.npy").read_bytes()
    (tmp_path / "d.npy").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="not a readable data set"):
        Dataset.load(tmp_path / "d.npy")


def test_missing_dataset_says_how_to_make_it(tmp_path):
    with pytest.raises(InputError, match=r"no such file \(run the generate stage: dvc repro\)"):
        Dataset.load(tmp_path / "nope.npy")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6.0).reshape(2, 3),  # float64
        np.arange(3, dtype=np.float32),  # one row
        np.arange(9, dtype=np.float32).reshape(3, 3),  # three rows
        np.zeros((2, 0), dtype=np.float32),  # empty
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # columns first
    ],
)
def test_wrong_arrays_are_rejected(tmp_path, array):
    np.save(tmp_path / "d.npy", array)
    with pytest.raises(InputError, match="expected a non-empty float32 array of 2 rows"):
        Dataset.load(tmp_path / "d.npy")


# --- history/<variant>.csv -------------------------------------------------------------------


def test_history_csv_round_trips_exactly(tmp_path, params):
    p = params({"train.epochs": 50})
    history = train("numpy", generate(p.data), p.train)
    history.write_csv(tmp_path / "h.csv")
    back = History.read_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text().splitlines()[:2] == ["epoch,w,loss", "1,0.3,30.0"]
    assert np.array_equal(back.epoch, history.epoch)
    assert np.array_equal(back.w, history.w) and np.array_equal(back.loss, history.loss)
