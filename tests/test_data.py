"""generate: the lesson's grid and the uniform layout, noise, memory at scale, data whose squares overflow float32."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gdpipe import data
from gdpipe.core.artifacts import Dataset
from gdpipe.core.command import InputError
from support import REPO, child_env, load_default_params, with_overrides, write_yaml


def test_uniform_layout_and_noise(params):
    p = params(
        {
            "data.x_layout": "uniform",
            "data.x_low": -3.0,
            "data.x_high": 5.0,
            "data.n_samples": 200_000,
            "data.noise_std": 0.5,
        }
    )
    generated = data.generate(p.data)
    assert generated.x.min() >= -3.0 and generated.x.max() < 5.0
    assert generated.x.mean() == pytest.approx(1.0, abs=0.05)
    noise = generated.y - 2.0 * generated.x
    assert noise.std() == pytest.approx(0.5, rel=0.01) and abs(noise.mean()) < 0.01


def test_noise_does_not_change_x(params):
    quiet = data.generate(params({"data.x_layout": "uniform", "data.n_samples": 1000}).data)
    noisy = data.generate(params({"data.x_layout": "uniform", "data.n_samples": 1000, "data.noise_std": 1.0}).data)
    assert np.array_equal(quiet.x, noisy.x) and not np.array_equal(quiet.y, noisy.y)


def _peak_rss_of_generate(tmp_path, n: int) -> int:
    """Peak resident memory (bytes) of the generate stage run as its own process."""
    params = write_yaml(
        tmp_path / f"p{n}.yaml",
        with_overrides(load_default_params(), {"data.n_samples": n, "data.noise_std": 1.0, "data.x_layout": "uniform"}),
    )
    script = (
        "import resource, sys;"
        "sys.path.insert(0, 'stages'); import generate; generate.main(sys.argv[1:]);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "--params", str(params), "--out", str(tmp_path / f"d{n}.npy")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=child_env(PYTHONPATH=str(REPO / "src")),
    )
    return int(done.stdout)


def test_ten_million_points_use_memory_close_to_the_arrays(tmp_path):
    n = 10_000_000
    baseline = _peak_rss_of_generate(tmp_path, 4)
    peak = _peak_rss_of_generate(tmp_path, n)
    arrays = 2 * 4 * n  # x and y, float32
    assert peak - baseline < 1.25 * arrays, f"{(peak - baseline) / arrays:.2f}x the arrays"
    loaded = Dataset.load(tmp_path / f"d{n}.npy")
    assert loaded.x.size == n


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data.true_w": 1e19},
            r"y = true_w \* x \+ noise reaches 4e\+19 .* y\^2, the loss at w = 0, "
            r"must fit float32 \(\|y\| < 1\.84e\+19\)",
        ),
        (
            {"data.x_layout": "uniform", "data.x_low": -1e20, "data.x_high": 1e20},
            r"\|x\| reaches .*e\+19, and x\^2 must fit float32",
        ),
    ],
)
def test_data_whose_squares_overflow_float32_is_refused(params, overrides, message):
    """Beyond sqrt(float32 max) the loss overflows before the first step, whatever the learning rate: refused, not
    'diverged'.
    """
    with pytest.raises(InputError, match=message):
        data.generate(params(overrides).data)
    edge = params({"data.true_w": 4.6e18}).data  # y up to 1.84e19 - a little: still trains
    assert float(np.abs(data.generate(edge).y).max()) < data.SQUARE_SAFE


def test_the_overflow_check_sees_nan_and_infinity_in_any_chunk():
    """generate's checks rest on the largest |value|: a NaN or infinity in a late chunk must not hide behind finite
    ones.
    """
    values = np.ones(3 * (1 << 20) + 5, dtype=np.float32)
    for bad in (np.nan, np.inf):
        values[-1] = bad
        assert not data._max_abs(values) < data.SQUARE_SAFE
