"""The champion: the quality gate lets a result through, and `promote` makes both its variants' versions
champion, or neither. MLflow has no transaction across two registered models, so a result's pair of
champions is one record and two aliases that follow it:

    1. Write the record: the tag CHAMPION_TAG of the first variant's registered model names the versions
       of the result ({"gdpipe-numpy": "3", "gdpipe-torch": "3"}). The last one written is the champion
       result, whatever the number of promoters at once.
    2. Settle: read the record and the aliases `champion`; where they differ, point each alias at the
       record's version and look again, until a look finds the record unchanged and the aliases on it.
    3. Say what that look found: our own result, or the one another promoter wrote after it.

The aliases end on the record: the last write of an alias comes after the last write of the record
(whose promoter settles after it), and a promoter whose alias writes followed a record it read before
that write sees the new record on its next look and writes again. A promoter stopped half-way leaves a
record the aliases do not follow: `make serve` refuses it (`servable`), and the next promotion settles it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from gdpipe.core.command import InputError
from gdpipe.track.store import retried_if_raced

CHAMPION = "champion"
CHAMPION_TAG = "gdpipe.champion"
SETTLE_TRIES = 50  # looks before giving up: each further one means another promoter wrote in between

Pair = dict[str, str]  # registered model name -> version


def promote(client: MlflowClient, current: Mapping[str, Mapping], verdict: Mapping) -> tuple[list[str], bool]:
    """Make the current result champion, all its variants or none, if the gate passed: one line per
    variant saying what the registry holds at the end, and whether this result is champion."""
    ours = {run["model_name"]: run["model_version"] for run in current.values()}
    refused = _refusals(current, verdict)
    if refused:
        held = settle(client, list(ours)) or aliases(client, list(ours))  # no record: an older gdpipe's aliases
        lines = []
        for variant, run in current.items():
            champion = held.get(run["model_name"])
            stays = f"version {champion} stays champion" if champion else "no version is champion"
            lines.append(f"{run['model_name']}: {stays}; {refused[variant]}")
        return lines, False
    was = champion_result(client, list(ours)) or aliases(client, list(ours))
    retried_if_raced(client.set_registered_model_tag, _holder(ours), CHAMPION_TAG, _encode(ours))
    now = settle(client, list(ours))
    if now == ours:
        lines = []
        for name, version in ours.items():
            before = "already" if was.get(name) == version else f"was {was.get(name) or 'none'}"
            lines.append(f"{name}: version {version} is champion ({before})")
        return lines, True
    return [
        f"{name}: version {now[name]} is champion (another promotion at the same time won); "
        f"version {version} was promoted, then replaced"
        for name, version in ours.items()
    ], False


def _refusals(current: Mapping[str, Mapping], verdict: Mapping) -> dict[str, str]:
    """Why each variant's version is not promoted, or nothing when the whole result is."""
    unfit = sorted(v for v, run in current.items() if run["model_version"] is None or run.get("status") == "diverged")
    if verdict["passed"] and not unfit:
        return {}
    refused = {}
    for variant, run in current.items():
        version = run["model_version"]
        if version is None:
            refused[variant] = "this result has no model to promote (it diverged before its first step)"
        elif not verdict["passed"]:
            # This variant's failed checks, and those of both (parity); all of them if none is its own.
            own = [check for check in verdict["failed"] if check.endswith((f"({variant})", "(both)"))]
            refused[variant] = (
                f"version {version} was not promoted: the gate failed ({', '.join(own or verdict['failed'])})"
            )
        elif variant in unfit:
            refused[variant] = f"version {version} was not promoted: it diverged"
        else:
            refused[variant] = (
                f"version {version} was not promoted: a result is promoted whole, and {', '.join(unfit)} cannot be"
            )
    return refused


def settle(client: MlflowClient, names: list[str]) -> Pair | None:
    """Point every alias `champion` at the version the champion record names, until one look finds the record
    unchanged and the aliases on it: the champion result. None when no record was ever written."""
    for _ in range(SETTLE_TRIES):
        record = champion_result(client, names)
        if record is None:
            return None
        if aliases(client, list(record)) == record and champion_result(client, names) == record:
            return record
        for name, version in record.items():
            retried_if_raced(client.set_registered_model_alias, name, CHAMPION, version)
    raise InputError(
        f"the champion of {', '.join(names)} kept changing while {SETTLE_TRIES} looks were taken "
        "(other promotions at the same time): run make promote again"
    )


def champion_result(client: MlflowClient, names: list[str]) -> Pair | None:
    """The versions the champion record names (model name -> version); None if there is none."""
    try:
        tags = client.get_registered_model(_holder(names)).tags
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    try:
        record = json.loads(tags.get(CHAMPION_TAG, "null"))
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
        return None  # not written by gdpipe: as if none
    return record


def aliases(client: MlflowClient, names: list[str]) -> dict[str, str | None]:
    """Each model's version named `champion`, or None."""
    return {name: _champion(client, name) for name in names}


def _holder(names) -> str:
    """The registered model that holds the champion record: the first name, the same for every promoter."""
    return min(names)


def _encode(pair: Pair) -> str:
    return json.dumps(pair, sort_keys=True, separators=(", ", ": "))


def _champion(client: MlflowClient, name: str) -> str | None:
    try:
        version: ModelVersion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return str(version.version)


def servable(name: str, record: Pair | None, held: dict[str, str | None], where: str) -> str:
    """The champion version of `name`, if every variant's champion is of the champion result; else InputError."""
    if record is None and held.get(name) is None:
        raise InputError(f"{name} has no champion in {where}: run make promote first")
    if record is None:
        raise InputError(
            f"{name}@{CHAMPION} in {where} was set by an older gdpipe, which kept no record of the champion "
            "result: run make promote (it records it), then make serve"
        )
    if held != record:
        now = ", ".join(f"{model}@{CHAMPION} is version {version or 'none'}" for model, version in held.items())
        result = ", ".join(f"{model} {version}" for model, version in record.items())
        raise InputError(
            f"the champions in {where} are not of one result ({now}; the champion result is {result}): a "
            "promotion is under way or was stopped half-way; wait for it, or run make promote, then make serve"
        )
    return record[name]
