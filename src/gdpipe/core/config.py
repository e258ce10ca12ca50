"""params.yaml, read in exactly one place and turned into one frozen, validated `Params` object.

A stage reads it once, when it starts; DVC reads it again after the stage exits, to record in
dvc.lock the values the stage's outputs were made with. A stage therefore checks, as it ends, that
the file still gives the values it used (`check_unchanged`): an edit or a `git pull` while it ran
fails the stage, so DVC records nothing for it and the next `dvc repro` runs it again.

The YAML is read the way DVC reads it (ruamel.yaml, safe loader, YAML 1.2), so `lr: 1e-3` is a
number for both, duplicate keys are an error and tags that would build Python objects are refused.
Every problem becomes an `InputError` whose one line names the file, the key, the value and what
is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gdpipe.core.command import InputError, run_command

Variant = Literal["numpy", "torch"]
VARIANTS: tuple[Variant, ...] = ("numpy", "torch")

# Upper bounds keep a typo (epochs: 100000000000, a few zeros too many) from allocating terabytes or running for
# a year.
MAX_EPOCHS = 10_000_000
MAX_SAMPLES = 1_000_000_000
# Processes per machine and machines: far beyond what a machine has cores or a team machines.
MAX_PROCESSES = 1024
MAX_NODES = 1024
# Data, w and f(x) are float32, as in the lesson: a larger number would be infinity there.
FLOAT32_MAX = 3.4028234663852886e38


def _fits_float32(value: float) -> float:
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"must be within float32's range, |value| <= {FLOAT32_MAX:.4g} (gdpipe computes in float32)")
    return value


Float32 = Annotated[float, AfterValidator(_fits_float32)]


class _Section(BaseModel):
    """Strict: no unknown keys, no strings posing as numbers, no NaN or infinity, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


class DataParams(_Section):
    """How `generate` builds the data set y = true_w * x + noise."""

    n_samples: int = Field(ge=1, le=MAX_SAMPLES)
    true_w: Float32
    noise_std: Float32 = Field(ge=0)
    seed: int = Field(ge=0)
    # grid: x = 1, 2, ..., n as in the lesson; uniform: x drawn from U(x_low, x_high).
    x_layout: Literal["grid", "uniform"]
    x_low: Float32
    x_high: Float32

    @model_validator(mode="after")
    def _range_is_ordered(self) -> DataParams:
        if self.x_layout == "uniform" and not self.x_low < self.x_high:
            raise ValueError(f"x_low must be < x_high for the uniform layout, got {self.x_low} and {self.x_high}")
        return self


class NumpyParams(_Section):
    """Options of the hand-written NumPy variant."""

    # mean: dL/dw = 2 * mean(x * (w*x - y)), the true gradient of the MSE.
    # sum: the lesson's np.dot(2*x, y_hat - y).mean(), N times too large (dot already sums).
    gradient: Literal["mean", "sum"]


class TorchParams(_Section):
    """Options of the PyTorch autograd variant; how many processes train it changes no bit of the result."""

    device: Literal["cpu", "cuda", "auto"]
    # Training processes on this machine (torchrun), and machines: docs/distributed.md.
    processes: int = Field(ge=1, le=MAX_PROCESSES)
    nodes: int = Field(ge=1, le=MAX_NODES)
    # host:port of this machine (node 0), where the other nodes join; used only when nodes > 1.
    rendezvous: str = Field(max_length=260)
    # Seconds the nodes have to join, and each process to reach every epoch's exchange, before training stops.
    join_timeout: int = Field(ge=1, le=86_400)

    @field_validator("rendezvous")
    @classmethod
    def _host_and_port(cls, rendezvous: str) -> str:
        host, _, port = rendezvous.rpartition(":")
        if not (re.fullmatch(r"[A-Za-z0-9.-]+", host) and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError("must be host:port, a name or IPv4 address of this machine and a port from 1 to 65535")
        return rendezvous

    @property
    def world_size(self) -> int:
        """Processes in all: each machine runs `processes` of them."""
        return self.processes * self.nodes


class TrainParams(_Section):
    """Full-batch gradient descent on f(x) = w * x, shared by both variants."""

    lr: float = Field(gt=0)
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    w_init: Float32
    log_every: int = Field(ge=1)
    numpy: NumpyParams
    torch: TorchParams


class EvaluateParams(_Section):
    """Where the trained line is evaluated: f(x)."""

    x: Float32


class TrackParams(_Section):
    """Where `track` publishes runs in MLflow."""

    # At most 256 characters: MLflow's database column (its own check allows 500, but PostgreSQL refuses more).
    experiment: str = Field(min_length=1, max_length=256)
    # The registered models are <model_name>-numpy and <model_name>-torch; part of a models:/ URI.
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200)
    # Points per per-epoch metric (w, loss) logged to MLflow, spread over the run, first and last epoch
    # included: MLflow's UI draws a few hundred per chart, and 10^6 epochs logged whole take minutes to
    # publish and to read back. The history CSV keeps every recorded epoch. At least 2: first and last.
    max_points_per_metric: int = Field(ge=2, le=MAX_EPOCHS)


# The metrics the gate can bound, a closed set so that a misspelt name fails at load time.
# A per-variant name bounds that key in every variant's section of metrics.json; prefixed with
# a variant ("numpy.loss") it bounds that variant's only.
VARIANT_METRICS = ("loss", "abs_error", "w", "prediction", "w_star_distance")
PARITY_METRICS = ("parity.max_abs_w_diff",)
METRICS = (*VARIANT_METRICS, *(f"{variant}.{key}" for variant in VARIANTS for key in VARIANT_METRICS), *PARITY_METRICS)
DEFAULT_BASELINE_REV = "HEAD"


def _known_metric(name: str) -> str:
    if name not in METRICS:
        raise ValueError(
            f"unknown metric {_short(repr(name))} (allowed: {', '.join(VARIANT_METRICS)} for every variant, "
            f"the same prefixed with {' or '.join(f'{variant}.' for variant in VARIANTS)} for one, "
            f"{', '.join(PARITY_METRICS)})"
        )
    return name


MetricName = Annotated[str, AfterValidator(_known_metric)]


class Bound(_Section):
    """The bars one metric must meet: absolute (min, max) and, optionally, relative to a git revision."""

    min: float | None = None
    max: float | None = None
    # A fraction of the baseline: 0.1 lets the value exceed the one committed at baseline_rev
    # by at most 10 % of its size. The gate reads that value from git (metrics.json is not cached).
    max_rel_increase: float | None = Field(default=None, ge=0)
    baseline_rev: str = Field(default=DEFAULT_BASELINE_REV, min_length=1)

    @model_validator(mode="after")
    def _is_a_bound(self) -> Bound:
        if self.min is None and self.max is None and self.max_rel_increase is None:
            raise ValueError("sets no bound: give max, min and/or max_rel_increase")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min must be <= max, got min {self.min:g} and max {self.max:g}")
        if "baseline_rev" in self.model_fields_set and self.max_rel_increase is None:
            raise ValueError("baseline_rev is used only with max_rel_increase")
        return self


class Params(_Section):
    """Everything in params.yaml."""

    data: DataParams
    train: TrainParams
    evaluate: EvaluateParams
    track: TrackParams
    # Read by the gate only; no DVC stage declares it, so editing a bound reruns nothing.
    thresholds: dict[MetricName, Bound]

    @model_validator(mode="after")
    def _a_point_for_every_process(self) -> Params:
        world = self.train.torch.world_size
        if world > self.data.n_samples:
            raise ValueError(
                f"train.torch.processes x nodes = {world} processes for data.n_samples = {self.data.n_samples} "
                "points: at most one process per point"
            )
        return self

    @field_validator("thresholds")
    @classmethod
    def _thresholds_not_empty(cls, thresholds: dict[str, Bound]) -> dict[str, Bound]:
        # An empty section would make a gate that passes everything.
        if not thresholds:
            raise ValueError("sets no threshold: name at least one metric")
        return thresholds


def load(path: str | Path) -> Params:
    """Read and validate params.yaml; raise InputError with one line naming every problem."""
    path = Path(path)
    document = _read_yaml(path)
    if document is None:
        raise InputError(f"{path} is empty; expected the sections {_allowed(Params)}")
    if not isinstance(document, dict):
        raise InputError(
            f"{path}: the top level must be a mapping of sections ({_allowed(Params)}), got {_kind(document)}"
        )
    try:
        return Params.model_validate(document)
    except ValidationError as err:
        raise InputError(f"{path}: {_describe(err)}") from None


def values(params: Params, keys: Iterable[str]) -> dict[str, Any]:
    """The values under `keys` (dotted, as in dvc.yaml: a section "data" or a key "train.lr"), one per dotted key:
    {"train.lr": 0.01, "train.numpy.gradient": "mean"}."""
    flat: dict[str, Any] = {}
    for key in keys:
        node: Any = params
        for part in key.split("."):
            node = getattr(node, part)
        flat |= _flatten(key, node.model_dump() if isinstance(node, BaseModel) else node)
    return flat


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    return {key: leaf for name, inner in value.items() for key, leaf in _flatten(f"{prefix}.{name}", inner).items()}


def changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The keys whose values differ, as "train.lr 0.01 -> 0.02" joined by "; "; empty if none do."""

    def shown(side: dict[str, Any], key: str) -> str:
        return _short(repr(side[key])) if key in side else "(none)"

    keys = [*before, *(key for key in after if key not in before)]
    return "; ".join(
        f"{key} {shown(before, key)} -> {shown(after, key)}"
        for key in keys
        if key not in before or key not in after or before[key] != after[key]
    )


def check_unchanged(path: str | Path, used: Params, keys: Iterable[str]) -> None:
    """InputError unless `path` still gives the values of `keys` that a stage read from it as `used`.

    The keys are the ones dvc.yaml declares for the stage: DVC reads them after the stage exits, and
    would record new values beside outputs made with the old ones.
    """
    keys = tuple(keys)
    try:
        now = load(path)
    except InputError as err:
        raise InputError(
            f"{path} changed while this stage ran and cannot be read now ({err}): fix it, then run make repro again"
        ) from None
    changed = changes(values(used, keys), values(now, keys))
    if changed:
        raise InputError(
            f"{path} changed while this stage ran ({changed}): its outputs were made with the old values, "
            "so DVC records nothing for it; run make repro again"
        )


def check_recorded(lock_path: str | Path, params_path: str | Path, params: Params, skip: Iterable[str]) -> None:
    """InputError if dvc.lock records, for a stage not in `skip`, params other than `params` (read from `params_path`).

    DVC records a stage's params as it finishes, and the stage has checked they are the ones it used: a
    difference means params.yaml changed after that stage ran, so its outputs are not of these params.
    Without dvc.lock (a stage run by hand) there is nothing to compare.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        lock = YAML(typ="safe").load(Path(lock_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError, YAMLError) as err:
        raise InputError(f"{lock_path}: cannot read: {_short(str(err), 120)} (dvc repro rewrites it)") from None
    for stage, entry in ((lock or {}).get("stages") or {}).items():
        if stage in skip:
            continue
        recorded = ((entry or {}).get("params") or {}).get(str(params_path)) or {}
        for key, value in recorded.items():
            try:
                now = values(params, [key])
            except AttributeError:  # a key this version no longer has
                now = {}
            changed = changes(_flatten(key, value), now)
            if changed:
                raise InputError(
                    f"{params_path} changed after the {stage} stage ran ({changed}): its outputs are not of these "
                    "params, so nothing was published; run make repro again"
                )


_TRAINING = ("train.lr", "train.epochs", "train.w_init", "train.log_every")


def training_keys(variant: Variant) -> tuple[str, ...]:
    """The keys that shape one variant's model: of train.torch only the device, as processes, nodes and the
    rendezvous change no bit of it."""
    return (*_TRAINING, "train.numpy" if variant == "numpy" else "train.torch.device")


def train_stage_keys(variant: Variant) -> tuple[str, ...]:
    """The keys dvc.yaml declares for train@<variant>: the training keys, data.x_layout (for a warning) and the
    variant's whole section."""
    return ("data.x_layout", *_TRAINING, f"train.{variant}")


def _read_yaml(path: Path) -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read: {err}") from None
    try:
        return YAML(typ="safe").load(text)
    except RecursionError:
        raise InputError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as err:  # e.g. an integer longer than Python converts (4300 digits)
        raise InputError(f"{path}: invalid YAML: {_short(str(err).split(';')[0], 120)}") from None
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (err.problem or err.context or "malformed YAML").strip()
        raise InputError(
            f"{path}: invalid YAML{where}: {problem} (plain YAML only: mappings, lists, numbers, strings)"
        ) from None
    except YAMLError as err:
        raise InputError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None


# What a value must be, by pydantic's error type (its `ctx` fills the blanks). Other types keep
# pydantic's own message.
_MUST_BE = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be {expected}",
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "int_type": "must be a whole number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "dict_type": "must be a mapping",
}
# Problems named in one line before the rest are only counted: enough for a renamed key and its
# missing old name, short enough to read.
_LINE_BUDGET = 400


def _describe(err: ValidationError) -> str:
    """Every problem pydantic found, unknown keys first (a typo or a renamed key is usually the
    mistake, and the missing key it leaves is its consequence), in one line."""
    errors = sorted(err.errors(), key=lambda error: error["type"] not in ("extra_forbidden", "invalid_key"))
    problems = [_problem(error) for error in errors]
    shown = problems[:1]
    for problem in problems[1:]:
        if len("; ".join([*shown, problem])) > _LINE_BUDGET:
            break
        shown.append(problem)
    rest = len(problems) - len(shown)
    return "; ".join(shown) + (f" (and {rest} more problem{'s' if rest > 1 else ''})" if rest else "")


def _problem(error: Any) -> str:
    """One problem as a user reads it: the dotted key, the value and what it must be."""
    loc, kind = error["loc"], error["type"]
    ctx = error.get("ctx", {})
    if loc[-1:] == ("[key]",):  # a key of the thresholds mapping: the key itself is the value
        mapping = _dotted(loc[:-2])
        if kind == "value_error":
            return f"{mapping}: {ctx['error']}"
        return f"{mapping}: key {_short(repr(error['input']))} must be a metric name"
    if kind in ("extra_forbidden", "invalid_key"):
        # invalid_key: a key that is not a string (YAML's `1:` or `null:`); the key is the input.
        key = (
            repr(_dotted(loc))
            if kind == "extra_forbidden"
            else f"{error['input']!r} in {_dotted(loc[:-1]) or 'the top level'}"
        )
        return f"unknown key {_short(key)} (allowed here: {_allowed(_model_at(Params, loc[:-1]))})"
    if kind == "missing":
        return f"missing key {_short(repr(_dotted(loc)))}"
    if kind == "model_type":  # a section that is not a mapping
        return f"{_dotted(loc)} = {_shown(error['input'])}: must be a mapping of {_allowed(_model_at(Params, loc))}"
    if kind == "value_error":
        message = str(ctx["error"])
    elif kind in _MUST_BE:
        message = _MUST_BE[kind].format(
            **{key: f"{value:g}" if isinstance(value, float) else value for key, value in ctx.items()}
        )
    else:
        message = error["msg"]
    if isinstance(error["input"], dict):  # a rule about the section as a whole (e.g. x_low < x_high)
        return f"{_dotted(loc)}: {message}" if loc else message
    return f"{_dotted(loc)} = {_shown(error['input'])}: {message}"


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The section model at `loc`: Params, then a field's model, a mapping entry's value model."""
    node: Any = model
    for part in loc:
        node = get_args(node)[1] if get_origin(node) is dict else node.model_fields[str(part)].annotation
    return node


def _allowed(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _shown(value: Any) -> str:
    return _kind(value) if isinstance(value, dict | list) else _short(repr(value))


def _short(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters, so a pasted blob still gives a readable line."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def main(argv=None):
    """`python -m gdpipe.core.config [params.yaml]`: check the whole file and say nothing if it is good.

    `make repro` and `make check` run it before `dvc repro`: DVC removes the outputs of a stage
    before running it, so a bad file found by the stage itself would cost them (until `dvc checkout`).
    What the stages will meet besides the file is checked too: MLFLOW_TRACKING_URI can be parsed (its
    secrets never printed), and the data set fits in the memory left.
    """
    import argparse

    from gdpipe.core import memory, store_uri

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("params", nargs="?", default="params.yaml")
    params = load(parser.parse_args(argv).params)
    try:
        store_uri.check_environment()
    except ValueError as err:
        raise InputError(str(err)) from None
    problem = memory.too_large(params.data.n_samples)
    if problem:
        raise InputError(problem)


if __name__ == "__main__":
    run_command(main)
