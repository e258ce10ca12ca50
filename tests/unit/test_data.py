"""generate: the lesson's grid and the uniform layout, noise, memory at scale, data whose squares overflow float32."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gdpipe import data
from gdpipe.core import memory
from gdpipe.core.artifacts import Dataset
from gdpipe.core.command import InputError, run_main
from support import PROGRAMS, REPO, assert_one_error_line, child_env, load_default_params, with_overrides, write_yaml


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
    done = subprocess.run(
        [sys.executable, PROGRAMS / "generate_peak.py", "--params", str(params), "--out", str(tmp_path / f"d{n}.npy")],
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


ADDRESS_SPACE = 1 << 30  # 1 GiB for the whole child: Python and NumPy take about 160 MB of it


def _limited(command: list[str], cwd) -> subprocess.CompletedProcess:
    """`command` as a child whose address space is limited (RLIMIT_AS, as `ulimit -v` sets it)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = child_env(PYTHONPATH=str(REPO / "src"))
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, preexec_fn=limit)


def test_a_data_set_larger_than_the_memory_left_is_one_line_in_the_config_check_and_in_generate(tmp_path):
    """200 million samples: 1.6 GB for x and y, 3.2 GB at the pipeline's peak, under a 1 GiB limit. The config
    check (make repro's first step) refuses it before DVC removes any output; generate, run alone as `dvc repro`
    would, meets the MemoryError and says the same. Each names the size, the need and what to change; no output."""
    n = 200_000_000
    params = write_yaml(tmp_path / "params.yaml", with_overrides(load_default_params(), {"data.n_samples": n}))
    check = _limited([sys.executable, "-m", "gdpipe.core.config", str(params)], tmp_path)
    stage = [sys.executable, str(REPO / "stages" / "generate.py"), "--params", str(params), "--out", "dataset.npy"]
    generate = _limited(stage, tmp_path)
    for done in (check, generate):
        assert done.returncode == 2, done.stderr
        assert_one_error_line(
            done.stderr,
            "data.n_samples = 200,000,000 needs about 3.2 GB of memory",
            "left under this process's limit (ulimit -v)",
            "lower data.n_samples well below ",
        )
    assert "not enough memory" in generate.stderr
    assert not (tmp_path / "dataset.npy").exists() and not list(tmp_path.glob(".*.tmp"))
    number, unit = re.search(r"and ([\d.]+) (GB|MB) is left", check.stderr).groups()
    left = float(number) * (1e9 if unit == "GB" else 1e6)
    assert 0.5 * ADDRESS_SPACE < left < ADDRESS_SPACE  # the limit, less what the checking process uses


def test_the_memory_left_is_the_smallest_of_what_the_machine_and_the_process_limit_allow():
    """The bound the config check compares with, here and under a limit set in a child."""
    room = memory.available()
    meminfo = Path("/proc/meminfo").read_text()
    available_kb = int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1))
    assert room is not None and 0 < room[0] <= available_kb * 1024 * 1.1
    script = "from gdpipe.core import memory; print(memory.available())"
    done = _limited([sys.executable, "-c", script], REPO)
    size, source = done.stdout.strip().strip("()").split(", ", 1)
    assert 0.5 * ADDRESS_SPACE < int(size) < ADDRESS_SPACE and "ulimit -v" in source


def test_a_data_set_too_large_to_load_is_one_line_in_every_later_stage(tmp_path, params, monkeypatch, capsys):
    """train, evaluate and track load the data set: a MemoryError there names the file, its size and what to change;
    any other MemoryError is one line too, with what NumPy asked for."""
    path = tmp_path / "dataset.npy"
    data.generate(params({"data.n_samples": 1000}).data).save(path)

    def refuse(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.45 GiB for an array with shape (2, 1000000000)")

    monkeypatch.setattr(np.lib.format, "read_array", refuse)
    with pytest.raises(InputError, match=r"dataset.npy: not enough memory to load it: data.n_samples = 1,0\d\d needs"):
        Dataset.load(path)
    assert run_main(lambda argv: refuse()) == 2
    assert capsys.readouterr().err == (
        "gdpipe: error: out of memory (Unable to allocate 7.45 GiB for an array with shape (2, 1000000000)): "
        "free memory or lower data.n_samples\n"
    )
