"""The Optuna side of make tune: the study's storage, the study itself, and a worker that runs its share of trials.

Any number of workers share one study through its storage (a database); together they finish exactly
`tune.trials` trials, and each trial's learning rate is asked of the sampler once:

    1. Look. `trials` COMPLETE: the study is done. Every trial still needed is RUNNING on some worker: wait,
       failing on the way those whose worker stopped beating (Optuna's heartbeat) and queueing them again
       (RetryHeartbeatStaleTrialCallback: the same learning rate, as a WAITING trial).
    2. Run one trial (study.optimize with n_trials=1: a WAITING trial first, else a new one), unless it is
       surplus: two workers that looked at the same moment may both start one for the last place. A trial
       runs only if fewer than `trials` live trials (COMPLETE, RUNNING, WAITING) are numbered before it;
       else it ends PRUNED, with no learning rate asked. Of any set of COMPLETE trials, the last-numbered
       one saw every other as live when it started, so no more than `trials` ever complete.

No DVC and no MLflow here: the objective is given (tune/trial.py runs a DVC experiment).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from gdpipe.core.command import InputError
from gdpipe.core.config import TuneParams
from gdpipe.core.store_uri import credentials, redact
from gdpipe.core.wait import wait_until

LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
# Set by the worker that made the study: its search space and epochs; its MLflow parent run (track/study_run.py).
SPACE_ATTR = "gdpipe.space"
PARENT_ATTR = "gdpipe.mlflow_parent_run"
SETUP_TRIES = 3  # workers that make a new database's tables at once: the losers find them on the next try
MAX_RETRY = 3  # times a trial whose worker died is run again before the study gives up on it
WAIT_S = 1.0  # how often a worker with nothing to run looks again


@dataclass(frozen=True)
class Opened:
    study: optuna.Study
    created: bool  # this worker made the study (and so makes its MLflow parent run)


def space(tune: TuneParams) -> dict[str, object]:
    """What makes two studies comparable: the same learning rates searched, each trained as long."""
    return {"lr_low": tune.lr_low, "lr_high": tune.lr_high, "epochs": tune.epochs}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's heartbeat is experimental and says so at every use; its own log lines repeat ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def open_study(url: str, tune: TuneParams) -> Opened:
    """The study `tune.study` in the storage `url`, made with the search space the first time; InputError (one line,
    no secrets) when the storage cannot be reached or its study of that name searches another space."""
    # Not WARNING: Optuna logs a failed trial there with its traceback; gdpipe says the failure in one line.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for attempt in range(SETUP_TRIES):
        try:
            with _quiet():
                storage = RDBStorage(
                    url,
                    heartbeat_interval=tune.heartbeat_interval,
                    grace_period=tune.grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
            opened = _create_or_load(storage, tune)
            break
        except SQLAlchemyError as err:  # includes a fresh database whose tables another worker made meanwhile
            if attempt == SETUP_TRIES - 1:
                raise InputError(f"tune storage {redact(url)}: {_first_line(err, url)}") from None
    if not opened.created:
        found = wait_for_attr(opened.study, SPACE_ATTR)
        if found != space(tune):
            raise InputError(
                f"tune storage {redact(url)}: study {tune.study!r} searches {_said(found)}, params.yaml's tune "
                f"{_said(space(tune))}: name another study (tune.study) or search the same space"
            )
    return opened


def _create_or_load(storage: RDBStorage, tune: TuneParams) -> Opened:
    """Exactly one worker makes the study (the storage's unique study name decides) and records its space."""
    if tune.sampler == "tpe":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=tune.seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=tune.seed)
    try:
        study = optuna.create_study(storage=storage, study_name=tune.study, sampler=sampler, direction="minimize")
    except DuplicatedStudyError:
        # Another worker's sampler has this seed: with the same one, both would ask for the same learning rates.
        sampler.reseed_rng()
        return Opened(optuna.load_study(study_name=tune.study, storage=storage, sampler=sampler), created=False)
    study.set_user_attr(SPACE_ATTR, space(tune))
    return Opened(study, created=True)


def forget(opened: Opened, url: str) -> None:
    """Delete a study this worker has just made, before any trial: the next make tune makes it anew."""
    optuna.delete_study(study_name=opened.study.study_name, storage=url)


def wait_for_attr(study: optuna.Study, key: str, timeout: float = 60) -> object:
    """A user attr that the study's maker sets right after making it (its space, its parent run)."""
    attrs = wait_until(lambda: study.user_attrs.get(key) and study.user_attrs, timeout, 0.2)
    if not attrs:
        raise InputError(
            f"study {study.study_name!r} has no {key}: the worker that made it stopped at once; "
            "name another study (tune.study)"
        )
    return attrs[key]


def _said(found: dict) -> str:
    return f"lr {found['lr_low']:g} to {found['lr_high']:g} with {found['epochs']} epochs"


def _first_line(err: BaseException, url: str) -> str:
    """The database's own first line (the driver's, without SQLAlchemy's statement and link), no password in it."""
    text = str(getattr(err, "orig", None) or err).strip()
    line = (text.splitlines() or [type(err).__name__])[0][:300]
    password = credentials(url)[1]
    return line.replace(password, "***") if password else line


Objective = Callable[[Trial, float], float]  # (trial, its learning rate) -> the loss; infinity when it diverged
Finished = Callable[[FrozenTrial], None]


def work(opened: Opened, tune: TuneParams, objective: Objective, finished: Finished = lambda trial: None) -> None:
    """Run trials of the study until it has `tune.trials` COMPLETE ones (the module's steps); `finished` is told
    of each trial this worker completes."""
    study = opened.study

    def one_trial(trial: Trial) -> float:
        earlier = study.get_trials(deepcopy=False, states=LIVE)
        if sum(other.number < trial.number for other in earlier) >= tune.trials:
            raise optuna.TrialPruned("surplus: every place in the study was taken when it started")
        lr = trial.suggest_float("lr", tune.lr_low, tune.lr_high, log=True)
        return objective(trial, lr)

    def told(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            finished(trial)

    while True:
        with _quiet():
            fail_stale_trials(study)
        states = [trial.state for trial in study.get_trials(deepcopy=False)]
        complete = states.count(TrialState.COMPLETE)
        if complete >= tune.trials:
            return
        if complete + states.count(TrialState.RUNNING) >= tune.trials:
            time.sleep(WAIT_S)  # the rest run elsewhere: finished, or failed once their worker stops beating
            continue
        # catch=(): a trial that raises (a DVC failure) stops this worker with its line; another worker
        # finds its trial FAIL, not stale, and runs a new one in its place.
        study.optimize(one_trial, n_trials=1, catch=(), callbacks=[told])


def value(trial: FrozenTrial) -> float:
    """A COMPLETE trial's loss (infinity: it diverged)."""
    return math.inf if trial.value is None else trial.value


def complete(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE trials, in trial order."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
