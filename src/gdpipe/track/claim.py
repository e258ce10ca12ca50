"""Exactly once: however many processes publish one result at the same time, it gets one FINISHED run.

MLflow's store has no unique key for a run, so the publishers of a result (its fingerprint) claim it:

    1. Look. A FINISHED run of the fingerprint is the result's run: done. A live RUNNING one is another
       publisher at work: wait, and look again.
    2. Claim. Make our own RUNNING run of the fingerprint, then look again: only a look after the claim
       can tell whether it is alone. Another live claim beside ours: both step back (delete the claim)
       and claim again a random moment later.
    3. Complete. Alone: fill the run, beating as it goes, make its model's version, then mark it
       FINISHED; unless, stalled for too long, it was taken for abandoned meanwhile: then look again.

Two claims cannot both be alone: the later one's look comes after the earlier one's claim, and sees it.
A claim whose publisher died (kill -9, a lost connection, a crashed server) stops beating; once its beat
has stood still for `abandoned_after()` seconds, the next publisher marks it KILLED (`_Watch`): at once on
a sqlite store, whose publishers take turns (store.store_lock). Ctrl-C and kill land between two calls to
the store, and mark the claim KILLED; any other failure marks it FAILED.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable

from mlflow import MlflowClient
from mlflow.entities import Run

from gdpipe.core.command import InputError, Terminated
from gdpipe.track.failures import first_line
from gdpipe.track.record import RunRecord, now_ms

FINGERPRINT_TAG = "gdpipe.fingerprint"
HEARTBEAT_TAG = "gdpipe.heartbeat"  # a RUNNING run's last sign of life (ms since the epoch), gone once FINISHED
HEARTBEAT_S = 1.0  # how often a publisher beats, at most (between two store calls)
ABANDONED_AFTER_S = 60  # default no-progress time after which a RUNNING run is abandoned (GDPIPE_ABANDONED_AFTER)
CONFIRM_S = 5.0  # how long a beat that looks old by this machine's clock must be seen standing still
POLL_S = 0.5  # how often a publisher that waits for another one looks again

Fill = Callable[[str, Callable[[], None]], None]  # (run id, between two store calls) -> the run's contents logged
Register = Callable[[str], str | None]  # run id -> its model's version (made the first time), None without a model


def publish_once(
    client: MlflowClient,
    experiment_id: str,
    record: RunRecord,
    sole_writer: bool,
    fill: Fill,
    register: Register,
    stop_if_asked: Callable[[], None],
) -> tuple[str, str | None, bool, list[str]]:
    """The one FINISHED run of the record (made now, or found), and its model version, however many publish it.

    `sole_writer`: no other publisher can be writing (the sqlite store's lock is held), so every RUNNING gdpipe
    run of the variant is abandoned. `stop_if_asked` lets a held Ctrl-C or kill land (command.signals_held).
    Returns (run id, model version, created, ids of the abandoned runs killed).
    """
    watch, killed, tries = _Watch(sole_writer), [], 0
    claim: str | None = None  # the id of our RUNNING run, once made
    try:
        while True:
            stop_if_asked()
            winner = _finished_run(client, experiment_id, record)
            running = _running_runs(client, experiment_id, record, sole_writer)
            if winner is not None:
                if claim is not None:
                    client.delete_run(claim)  # a claim that lost goes, and nothing of it is shown
                    claim = None
                return winner, register(winner), False, killed
            others = [run for run in running if run.info.run_id != claim]
            for run in others:
                if watch.abandoned(run):
                    client.set_terminated(run.info.run_id, "KILLED")
                    killed.append(run.info.run_id)
            live = [run for run in others if run.info.run_id not in killed]
            if live and claim is not None:  # another live claim beside ours: both step back, try again at random
                client.delete_run(claim)
                claim = None
                tries += 1
                time.sleep(random.uniform(0, min(2.0, 0.1 * 2**tries)))
            elif live:  # another publisher is at it: wait for its run to finish, or to be abandoned
                time.sleep(POLL_S)
            elif claim is None:
                claim = _claim(client, experiment_id, record)
                # then look again: only a look after the claim can tell whether it is alone
            else:
                between = _between_calls(client, claim, stop_if_asked)
                fill(claim, between)
                if client.get_run(claim).info.status == "RUNNING":
                    # The version before FINISHED: whoever finds the run finds its version too.
                    version = register(claim)
                    client.delete_tag(claim, HEARTBEAT_TAG)
                    client.set_terminated(claim, "FINISHED", end_time=record.finished_ms or now_ms())
                    return claim, version, True, killed
                claim = None  # taken for abandoned by another publisher (a call stalled): its run, or a new claim, wins
    except BaseException as err:
        if claim is not None:
            _end_after(err, client, claim, record)
        raise


def abandoned_after() -> float:
    """Seconds without progress after which another publisher's RUNNING run counts as abandoned."""
    setting = os.environ.get("GDPIPE_ABANDONED_AFTER", str(ABANDONED_AFTER_S))
    try:
        seconds = float(setting)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise InputError(f"GDPIPE_ABANDONED_AFTER={setting!r}: must be a number of seconds above 0 (default 60)")
    return seconds


def _end_after(err: BaseException, client: MlflowClient, run_id: str, record: RunRecord) -> None:
    """Never leave a run RUNNING after an exception: Ctrl-C or kill marks it KILLED, any other failure
    FAILED, and a note on the exception says which (it becomes part of the line the stage prints)."""
    status = "KILLED" if isinstance(err, KeyboardInterrupt | Terminated) else "FAILED"
    note = f"{record.variant} run {run_id} marked {status}"
    try:
        client.set_terminated(run_id, status)
    except Exception as status_err:
        note = f"{record.variant} run {run_id} could not be marked {status} and stays RUNNING"
        note += f" ({first_line(status_err, client.tracking_uri)})"
    err.add_note(note)


class _Watch:
    """Tells a live publisher's RUNNING run from one whose publisher died (SIGKILL, lost connection, server crash).

    A live publisher beats: its run's HEARTBEAT_TAG gets the time every HEARTBEAT_S while it works. A
    run is abandoned once its beat has not moved for `abandoned_after()` seconds: by the beat's own
    time when this machine's clock agrees (checked by watching it stand still for CONFIRM_S), else
    by watching it for that long, so that a skewed clock delays healing but never kills a live run.
    """

    def __init__(self, sole_writer: bool):
        self.sole_writer, self.after = sole_writer, abandoned_after()
        self.seen: dict[str, tuple[str, float]] = {}  # run id -> (its beat, when first seen with that beat)

    def abandoned(self, run: Run) -> bool:
        if self.sole_writer:
            return True
        beat = run.data.tags.get(HEARTBEAT_TAG, "")
        seen_beat, since = self.seen.get(run.info.run_id, (None, time.monotonic()))
        if beat != seen_beat:
            self.seen[run.info.run_id] = (beat, time.monotonic())
            return False
        watched = time.monotonic() - since
        age = time.time() - int(beat) / 1000 if beat.isdigit() else math.inf
        return watched >= self.after or (watched >= min(CONFIRM_S, self.after) and age >= self.after)


def _finished_run(client: MlflowClient, experiment_id: str, record: RunRecord) -> str | None:
    """The id of the record's FINISHED run; the oldest, if an older gdpipe made more than one."""
    finished = f"tags.`{FINGERPRINT_TAG}` = '{record.fingerprint}' and attributes.status = 'FINISHED'"
    found = client.search_runs(
        [experiment_id], filter_string=finished, max_results=1, order_by=["attributes.start_time ASC"]
    )
    return found[0].info.run_id if found else None


def _running_runs(client: MlflowClient, experiment_id: str, record: RunRecord, sole_writer: bool) -> list[Run]:
    """RUNNING runs of the record; when `sole_writer`, every RUNNING gdpipe run of its variant (all are abandoned)."""
    ours = f"tags.variant = '{record.variant}' and tags.`{FINGERPRINT_TAG}` LIKE '%'"
    mine = ours if sole_writer else f"tags.`{FINGERPRINT_TAG}` = '{record.fingerprint}'"
    return client.search_runs([experiment_id], filter_string=f"{mine} and attributes.status = 'RUNNING'")


def _claim(client: MlflowClient, experiment_id: str, record: RunRecord) -> str:
    """A RUNNING run of the record, with its first beat: the claim to publish it."""
    tags = record.tags | {FINGERPRINT_TAG: record.fingerprint, HEARTBEAT_TAG: str(now_ms())}
    return client.create_run(
        experiment_id, start_time=record.started_ms or now_ms(), tags=tags, run_name=record.name
    ).info.run_id


def _between_calls(client: MlflowClient, run_id: str, stop_if_asked: Callable[[], None]) -> Callable[[], None]:
    """What `fill` calls between two calls to the store: a held stop lands, and every HEARTBEAT_S the claim
    beats (its HEARTBEAT_TAG gets the time, which `_Watch` reads)."""
    last = time.monotonic()

    def between() -> None:
        nonlocal last
        stop_if_asked()
        if time.monotonic() - last >= HEARTBEAT_S:
            client.set_tag(run_id, HEARTBEAT_TAG, str(now_ms()))
            last = time.monotonic()

    return between
