"""make tune: an Optuna study of train.lr (params.yaml's tune), run by this worker and the others of its storage.

    python -m gdpipe.tune --params params.yaml

The study lives in GDPIPE_TUNE_STORAGE (a SQLAlchemy URL: make server's PostgreSQL, which `make server` prints),
by default this clone's sqlite file mlruns/optuna.db. Its runs go where make repro's go (MLFLOW_TRACKING_URI, by
default mlruns/), in the MLflow experiment named after the study: one parent run, a child per trial and variant.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gdpipe import venv
from gdpipe.core import config
from gdpipe.core.command import InputError, run_command
from gdpipe.core.files import write_bytes
from gdpipe.core.store_uri import redact
from gdpipe.track import settings
from gdpipe.track.where import repo_root, tracking_uri

STORAGE_VARIABLE = "GDPIPE_TUNE_STORAGE"
PICTURE = Path("reports/tune.png")  # also the parent run's artifact tune.png


def storage_url(root: Path) -> str:
    """GDPIPE_TUNE_STORAGE, else this clone's sqlite file: a study that needs no server."""
    return os.environ.get(STORAGE_VARIABLE) or f"sqlite:///{root / 'mlruns' / 'optuna.db'}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = config.load(args.params)
    tune = params.tune
    root = repo_root()
    blocked = venv.experiments_blocked(str(root))
    if blocked is not None:  # before any study is made: every trial would fail the same way
        cause, remedy = blocked
        raise InputError(
            f"make tune runs each trial as a temporary DVC experiment, which DVC cannot set up {cause} (an upstream "
            f"bug): {remedy}"
        )
    uri, url = tracking_uri(root), storage_url(root)
    settings.apply()
    from gdpipe.track import study_run
    from gdpipe.tune import report, search, trial

    study_run.check(uri, tune.study)
    opened = search.open_study(url, tune)
    if opened.created:
        try:
            parent = study_run.create(uri, tune.study, tune.study, tune.model_dump())
        except BaseException:  # a study without its parent run would keep every other worker waiting: none
            search.forget(opened, url)
            raise
        opened.study.set_user_attr(search.PARENT_ATTR, parent)
    else:
        parent = str(search.wait_for_attr(opened.study, search.PARENT_ATTR))
    print(
        f"study {tune.study} ({redact(url)}): {tune.trials} trials of train.lr in [{tune.lr_low:g}, {tune.lr_high:g}], "
        f"{tune.epochs} epochs each; parent run {parent} ({tune.study} at {redact(uri)})",
        flush=True,
    )

    def objective(optuna_trial, lr: float) -> float:
        name, loss = trial.run(tune, lr, optuna_trial.number, parent)
        optuna_trial.set_user_attr("dvc_experiment", name)
        return loss

    def finished(done) -> None:
        line = report.trial_line(done.number, done.params["lr"], done.value, done.user_attrs["dvc_experiment"])
        print(line, flush=True)

    search.work(opened, tune, objective, finished)
    trials = search.complete(opened.study)
    best = min(trials, key=search.value)
    closed_form = closed_form_lr(params)
    write_bytes(
        PICTURE,
        report.draw([t.params["lr"] for t in trials], [search.value(t) for t in trials], closed_form, tune.study),
    )
    numbers = {"best_lr": best.params["lr"], "best_loss": search.value(best), "closed_form_lr": closed_form}
    study_run.finish(uri, parent, PICTURE, {key: value for key, value in numbers.items() if value != float("inf")})
    print(report.table(best.number, best.params["lr"], search.value(best), closed_form, len(trials)))
    print(f"The study's runs are in MLflow at {redact(uri)}, experiment {tune.study}; picture: {PICTURE}")


def closed_form_lr(params: config.Params) -> float:
    """The learning rate that reaches w* in one step on the study's data: 1/(2 mean(x^2)), half the stability bound."""
    from gdpipe.data import generate
    from gdpipe.linear import lr_bound

    return lr_bound(generate(params.data).x) / 2


if __name__ == "__main__":
    run_command(main)
