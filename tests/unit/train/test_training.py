"""train/: both variants follow the same trajectory, reach the optimum, record a divergence and the lesson's print
schedule.
"""

from __future__ import annotations

import resource

import numpy as np
import pytest
import torch
from torch.nn.functional import mse_loss

from gdpipe import linear, train
from gdpipe.core.artifacts import TrainedModel
from gdpipe.data import generate
from gdpipe.linear import optimal_w, predict

FLOAT32_EPS = float(np.finfo(np.float32).eps)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"train.epochs": 300, "train.lr": 0.1, "train.w_init": -3.0},
        {
            "data.n_samples": 5000,
            "data.x_layout": "uniform",
            "data.noise_std": 0.5,
            "train.lr": 0.5,
            "train.epochs": 200,
        },
        {  # several chunks, the last one shorter
            "data.n_samples": 3 * linear.CHUNK + 17,
            "data.x_layout": "uniform",
            "data.noise_std": 0.5,
            "train.lr": 0.5,
            "train.epochs": 50,
        },
    ],
)
def test_numpy_and_torch_trajectories_agree_to_float32_rounding(params, overrides):
    p = params(overrides)
    dataset = generate(p.data)
    numpy_history = train.train("numpy", dataset, p.train)
    torch_history = train.train("torch", dataset, p.train)
    assert numpy_history.epoch.tolist() == torch_history.epoch.tolist() == list(range(1, p.train.epochs + 1))
    # A few float32 ulps of w at every epoch; the loss agrees to float32 precision of its own size.
    w_scale = np.maximum(1.0, np.abs(numpy_history.w))
    assert np.all(np.abs(numpy_history.w - torch_history.w) <= 4 * FLOAT32_EPS * w_scale)
    assert np.allclose(numpy_history.loss, torch_history.loss, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("variant", ["numpy", "torch"])
def test_default_params_reach_the_closed_form_optimum(params, variant):
    p = params()
    dataset = generate(p.data)
    history = train.train(variant, dataset, p.train)
    assert optimal_w(dataset.x, dataset.y) == 2.0
    assert history.w[-1] == pytest.approx(2.0, abs=1e-6)
    assert f"{predict(history.w[-1], p.evaluate.x):.3f}" == "10.000"
    assert history.loss[-1] < 1e-10 < history.loss[0] == 30.0
    assert history.diverged_at is None


@pytest.mark.parametrize("variant", ["numpy", "torch"])
def test_noisy_data_converges_to_w_star_not_true_w(params, variant):
    p = params(
        {"data.n_samples": 200, "data.x_layout": "uniform", "data.noise_std": 1.0, "train.lr": 0.5, "train.epochs": 500}
    )
    dataset = generate(p.data)
    w_star = optimal_w(dataset.x, dataset.y)
    history = train.train(variant, dataset, p.train)
    assert abs(w_star - 2.0) > 1e-3  # the noise moves the optimum away from the true line...
    assert history.w[-1] == pytest.approx(w_star, abs=1e-5)  # ...and gradient descent follows the optimum


@pytest.mark.parametrize("variant", ["numpy", "torch"])
def test_learning_rate_just_above_the_bound_diverges_and_is_recorded(params, variant):
    # Bound for x = 1..4 is 1/7.5 = 0.1333; at 0.14 the error grows 1.1x per epoch until float32 overflows.
    p = params({"train.lr": 0.14, "train.epochs": 2000})
    dataset = generate(p.data)
    history = train.train(variant, dataset, p.train)
    assert history.diverged_at is not None and 300 < history.diverged_at < 2000
    assert history.epoch[-1] == history.diverged_at - 1
    assert np.all(np.isfinite(history.w)) and np.all(np.isfinite(history.loss))
    model = TrainedModel.from_history(variant, history, {"train.lr": 0.14})
    assert model.diverged and model.w == history.w[-1]
    note = train.divergence_note(variant, history.diverged_at, dataset, p.train, p.data.x_layout)
    assert (
        f"diverged at epoch {history.diverged_at}" in note and "0 < lr < 0.1333" in note and "train.lr = 0.14" in note
    )


@pytest.mark.parametrize("lr", [0.14, 0.2, 0.5])
def test_both_variants_diverge_at_about_the_same_epoch(params, lr):
    """w and loss are float32 in both, so both see the overflow; torch's float32 squares overflow a few
    epochs before their mean does (the NumPy loss is the exact mean, rounded once)."""
    p = params({"train.lr": lr, "train.epochs": 2000})
    dataset = generate(p.data)
    numpy_at = train.train("numpy", dataset, p.train).diverged_at
    torch_at = train.train("torch", dataset, p.train).diverged_at
    assert numpy_at is not None and torch_at is not None
    assert abs(numpy_at - torch_at) <= max(2, 0.02 * torch_at), (numpy_at, torch_at)


@pytest.mark.parametrize("variant", ["numpy", "torch"])
def test_a_loss_beyond_float32_at_the_start_is_blamed_on_w_init_not_on_the_learning_rate(params, variant):
    p = params({"train.w_init": 1e19})  # lr 0.01 is stable; (w_init * x - y)^2 is not a float32
    dataset = generate(p.data)
    history = train.train(variant, dataset, p.train)
    assert history.diverged_at == 1
    note = train.divergence_note(variant, history.diverged_at, dataset, p.train, p.data.x_layout)
    assert note == (
        f"{variant} diverged at epoch 1: the loss at train.w_init = 1e+19 is already beyond float32's range, "
        "whatever the learning rate; start nearer the data (a smaller |train.w_init|)."
    )


def test_learning_rate_just_below_the_bound_converges(params):
    p = params({"train.lr": 0.13, "train.epochs": 2000})
    history = train.train("numpy", generate(p.data), p.train)
    assert history.diverged_at is None and history.w[-1] == pytest.approx(2.0, abs=1e-5)


def test_divergence_note_on_a_large_grid_suggests_the_uniform_layout(params):
    p = params({"data.n_samples": 1000, "train.epochs": 300})
    dataset = generate(p.data)
    history = train.train("numpy", dataset, p.train)
    assert history.diverged_at is not None
    note = train.divergence_note("numpy", history.diverged_at, dataset, p.train, p.data.x_layout)
    assert "3/n^2" in note and "x_layout: uniform" in note


def test_log_every_records_the_lessons_print_schedule_and_the_last_epoch(params):
    p = params({"train.epochs": 20, "train.log_every": 2})
    full = train.train("torch", generate(p.data), params({"train.epochs": 20}).train)
    sparse = train.train("torch", generate(p.data), p.train)
    assert sparse.epoch.tolist() == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 20]
    assert np.array_equal(sparse.w, full.w[sparse.epoch - 1])
    assert np.array_equal(sparse.loss, full.loss[sparse.epoch - 1])


def test_torch_epochs_fault_in_no_memory_once_the_first_has_run(params):
    """Each block of chunks frees its temporaries and the next one takes them back from the heap, not from the
    system: without keep_freed_memory glibc returned them, 1,000 page faults (4 MB) an epoch at 2 x 10^6 points."""
    p = params(
        {"data.n_samples": 2_000_000, "data.x_layout": "uniform", "train.lr": 1.0, "train.epochs": 20}
    )  # 123 chunks: two blocks
    dataset = generate(p.data)
    train.train("torch", dataset, p.train)  # the heap grows to what an epoch needs
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train.train("torch", dataset, p.train)
    # Under a fifth of the 1,000 an epoch: a one-off growth of the process's memory elsewhere, 4 MB (1,024 faults,
    # 51 an epoch) once in CI, is no fault of the epochs.
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / p.train.epochs < 200


@pytest.mark.parametrize(("gradient", "function"), [("mean", linear.mse_grad), ("sum", linear.lesson_grad)])
def test_the_numpy_step_calls_the_gradient_the_tests_hold_against_autograd(params, monkeypatch, gradient, function):
    """Each epoch calls predict, mse and the chosen gradient of gdpipe.linear once: the functions test_linear proves."""
    p = params({"train.epochs": 7, "train.numpy.gradient": gradient})
    calls = []

    def counted(name, real):
        def call(*args):
            calls.append(name)
            return real(*args)

        return call

    from gdpipe.train import numpy_variant

    for name in ("predict", "mse", function.__name__):
        monkeypatch.setattr(numpy_variant, name, counted(name, getattr(linear, name)))
    history = train.train("numpy", generate(p.data), p.train)
    assert calls == ["predict", "mse", function.__name__] * 7
    assert history.w[0] == pytest.approx(1.2 if gradient == "sum" else 0.3, rel=1e-6)


def lessons_torch_loop(dataset, p):
    """The lesson's torch loop on the whole data at once: forward, mse_loss, backward(), w -= lr * w.grad."""
    x, y = torch.from_numpy(dataset.x), torch.from_numpy(dataset.y)
    w = torch.tensor(p.train.w_init, dtype=torch.float32, requires_grad=True)
    ws, losses = [], []
    for _ in range(p.train.epochs):
        loss = mse_loss(predict(w, x), y)
        loss.backward()
        with torch.no_grad():
            w -= p.train.lr * w.grad
        w.grad.zero_()
        ws.append(w.item())
        losses.append(loss.item())
    return np.array(ws, dtype=np.float32), np.array(losses, dtype=np.float32)


@pytest.mark.parametrize("n", [4, 1000, linear.CHUNK])
def test_torch_on_one_chunk_is_the_lessons_loop_on_the_whole_data_bit_for_bit(params, n):
    """Up to one chunk (16 Ki points), summing per chunk changes no bit: the lesson's 4 points give today's history."""
    p = params(
        {"data.n_samples": n, "data.x_layout": "uniform", "data.noise_std": 0.5, "train.lr": 0.5, "train.epochs": 60}
    )
    dataset = generate(p.data)
    history = train.train("torch", dataset, p.train)
    w, loss = lessons_torch_loop(dataset, p)
    assert np.array_equal(history.w, w.astype(np.float64)) and np.array_equal(history.loss, loss.astype(np.float64))


def test_torch_gives_the_same_bits_at_any_thread_count(params):
    """torch sums a whole-data float32 loss in per-thread parts (its bits change with the thread count at a
    million points); the chunks are summed whole, each by one thread, and added in float64."""
    p = params(
        {
            "data.n_samples": 1_200_000,  # 74 chunks: two blocks of rows, the last chunk shorter
            "data.x_layout": "uniform",
            "data.noise_std": 0.5,
            "train.lr": 0.5,
            "train.epochs": 8,
        }
    )
    dataset = generate(p.data)
    threads = torch.get_num_threads()
    histories = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            histories.append(train.train("torch", dataset, p.train))
    finally:
        torch.set_num_threads(threads)
    for other in histories[1:]:
        assert np.array_equal(other.w, histories[0].w) and np.array_equal(other.loss, histories[0].loss)
