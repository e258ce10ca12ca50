"""The end of every command: bad input exit 2, Ctrl-C 130 and kill 143, each with one line, after the
cleanup they set off; a signal Python would drop inside a finalizer still stops the command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from gdpipe.core.command import InputError, run_main, signals_held
from support import (
    PROGRAMS,
    REPO,
    TRAIN_ARGS,
    load_default_params,
    sitecustomize,
    src_env,
    wait_for,
    with_overrides,
    write_yaml,
)


def test_sigint_sigterm_and_sigkill_during_training_keep_the_previous_outputs(workspace, tmp_path, reaper):
    """Ctrl-C and kill exit 130 and 143 with one line; SIGKILL too leaves the previous history and model, and no
    temporary file.
    """
    hook = tmp_path / "hook"
    sitecustomize(hook, "training_started")
    cases = {
        "SIGINT": ("numpy", signal.SIGINT, 130),
        "SIGTERM": ("torch", signal.SIGTERM, 143),
        "SIGKILL": ("numpy", signal.SIGKILL, -9),
    }
    running = {}
    for name, (variant, _, _) in cases.items():
        folder = tmp_path / name
        shutil.copytree(workspace, folder)
        write_yaml(
            folder / "params.yaml", with_overrides(load_default_params(), {"train.epochs": 3_000_000})
        )  # about a minute
        outputs = [f"history/{variant}.csv", f"history/{variant}.timing.json", f"models/{variant}.json"]
        before = {output: (folder / output).read_bytes() for output in outputs}
        argv = [sys.executable, str(REPO / "stages" / "train.py"), *TRAIN_ARGS]
        argv[argv.index("numpy")] = variant
        env = src_env(
            PYTHONPATH=f"{hook}{os.pathsep}{REPO / 'src'}", GDPIPE_TEST_TRAINING_STARTED=str(folder / "started")
        )
        process = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reaper(process)
        running[name] = (folder, process, before)
    for name, (folder, process, _) in running.items():
        wait_for((folder / "started").exists, process, what="training started")
        process.send_signal(cases[name][1])
    for name, (folder, process, before) in running.items():
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == cases[name][2], (name, stderr)
        if name != "SIGKILL":
            stopped = "interrupted" if name == "SIGINT" else "terminated"
            assert stderr == f"gdpipe: {stopped} ({name}); no output was half-written\n"
        assert {output: (folder / output).read_bytes() for output in before} == before, (
            f"{name}: an earlier result was lost"
        )
        assert not [path.name for path in folder.rglob("*") if path.name.endswith(".tmp")], name


@pytest.mark.parametrize("then", ["then sleeps", "then returns"])
@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_that_arrives_in_a_finalizer_still_stops_the_command(name, code, then):
    """Python prints and drops an exception raised in a finalizer or weakref callback (SQLAlchemy has many): run_main
    delivers it again, also when the finalizer was main's last act.
    """
    done = subprocess.run(
        [sys.executable, PROGRAMS / "dropped_signal.py", name, then],
        env=src_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout) == (code, ""), done.stderr
    stopped = "interrupted" if name == "SIGINT" else "terminated"
    assert done.stderr == f"gdpipe: {stopped} ({name}); no output was half-written\n"


def test_bad_input_is_one_line_and_exit_2(capsys):
    def main(argv):
        raise InputError("params.yaml: train.lr = -1: must be > 0")

    assert run_main(main, []) == 2
    assert capsys.readouterr() == ("", "gdpipe: error: params.yaml: train.lr = -1: must be > 0\n")


def test_what_the_cleanup_did_is_part_of_the_interrupted_line(capsys):
    def main(argv):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            err.add_note("numpy run 123 marked KILLED")
            raise

    assert run_main(main, []) == 130
    assert (
        capsys.readouterr().err
        == "gdpipe: interrupted (SIGINT); numpy run 123 marked KILLED; no output was half-written\n"
    )


def test_a_command_keeps_the_collector_on_and_leaves_the_signal_handlers_as_it_found_them():
    """The collector runs while a command runs (a cycle made per epoch must not pile up), a signal the
    parent ignores (nohup) stays ignored, and the handlers are put back afterwards."""
    import gc

    seen = {}

    def main(argv):
        seen.update(gc=gc.isenabled(), sigterm=signal.getsignal(signal.SIGTERM), sigint=signal.getsignal(signal.SIGINT))

    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        sigint = signal.getsignal(signal.SIGINT)
        assert run_main(main, []) == 0
        assert seen["gc"] and seen["sigterm"] == signal.SIG_IGN and seen["sigint"] not in (sigint, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN and signal.getsignal(signal.SIGINT) == sigint
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_stop_inside_signals_held_waits_for_the_end_of_the_block(capsys):
    """A store call is never cut in half: the signal takes effect when the block is done, before the next line."""
    events = []

    def main(argv):
        with signals_held():
            signal.raise_signal(signal.SIGTERM)
            events.append("the call finished")
        events.append("went on")

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert run_main(main, []) == 143
    assert events == ["the call finished"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # not left ignored
    assert capsys.readouterr().err == "gdpipe: terminated (SIGTERM); no output was half-written\n"


def test_a_command_frees_reference_cycles_as_it_goes():
    """The collector runs while a command runs: a cycle made per epoch costs bounded memory, not its count."""
    done = subprocess.run(
        [sys.executable, PROGRAMS / "cycles.py"], env=src_env(), capture_output=True, text=True, check=True
    )
    assert int(done.stdout) < 150 * 2**20, f"{int(done.stdout) / 2**20:.0f} MiB resident"
