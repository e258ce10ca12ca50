"""The quality gate: hold metrics.json to params.yaml's thresholds, report the result, fail the build.

    python -m gdpipe.gate --params params.yaml --metrics metrics.json --plot plots/curves.png --report reports/check.md

Prints one row per check (metric, variant, value, bound, result), writes the same as Markdown for a
pull-request comment with the loss curves beside it and the verdict as JSON beside that (what
`make promote` reads; the gate never talks to MLflow), and exits 0 when every check passes, 1 when any
fails, 2 when the input is bad (invalid thresholds, no metrics.json, an unknown baseline revision).
Every variant must also have trained without diverging: that check needs no threshold. The report
also compares every metric and the params that differ with a baseline revision (--baseline; by default
origin/$GITHUB_BASE_REF on a pull request in CI, else HEAD), read through dvc.api.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdpipe.core import config
from gdpipe.core.command import InputError, run_command
from gdpipe.core.config import VARIANTS, Bound
from gdpipe.core.files import atomic_write, file_sha256, read_json, write_bytes, write_json

EXIT_FAILED = 1
BOTH = "both"  # the variant column of a metric that compares the variants (parity)
HEADER = ("metric", "variant", "value", "bound", "result")
MISSING = object()  # a metric or param one side of a comparison does not have


@dataclass(frozen=True)
class Result:
    """One check: one metric of one variant (or of both, for parity) against one bound."""

    metric: str  # as named in params.yaml without the variant: loss, parity.max_abs_w_diff, diverged
    variant: str  # numpy, torch, or BOTH
    value: float | None  # None when there is no number to check (diverged, missing, null)
    shown: str  # the value as printed, or why there is none: "diverged at epoch 12"
    bound: str  # "<= 0.01", ">= 1.9", "<= 9.9e-13 (HEAD 9e-13 +10%)"
    passed: bool


def check(
    metrics: Mapping[str, Any], thresholds: Mapping[str, Bound], baseline: Mapping[str, Mapping[str, Any]]
) -> list[Result]:
    """Every check, in order: each variant trained without diverging, then each threshold for each variant it names.

    `baseline` maps a git revision to the metrics committed there; only bounds with max_rel_increase read it.
    Nothing in `metrics` can make this raise: a missing, diverged or non-numeric value is a failed check.
    """
    results = [_check_trained(metrics, variant) for variant in VARIANTS]
    for name, bound in thresholds.items():
        for variant, key in _targets(name):
            value, why = _lookup(metrics, variant, key)
            metric = name.removeprefix(f"{variant}.") if variant != BOTH else name
            shown = _number(value) if value is not None else why
            checks = []  # (the bound as shown, passed)
            if bound.min is not None:
                checks.append((f">= {_number(bound.min)}", value is not None and value >= bound.min))
            if bound.max is not None:
                checks.append((f"<= {_number(bound.max)}", value is not None and value <= bound.max))
            if bound.max_rel_increase is not None:
                checks.append(_relative(value, bound, baseline.get(bound.baseline_rev), variant, key))
            results += [Result(metric, variant, value, shown, text, passed) for text, passed in checks]
    return results


def _check_trained(metrics: Mapping[str, Any], variant: str) -> Result:
    section = metrics.get(variant)
    if not isinstance(section, Mapping):
        return Result("diverged", variant, None, "missing from metrics.json", "= false", False)
    diverged = section.get("diverged")
    if diverged is False:
        return Result("diverged", variant, None, "false", "= false", True)
    if diverged is True:
        return Result(
            "diverged", variant, None, f"true (at epoch {section.get('diverged_at_epoch')})", "= false", False
        )
    return Result("diverged", variant, None, "missing" if diverged is None else repr(diverged), "= false", False)


def _targets(name: str) -> list[tuple[str, str]]:
    """(variant, key) pairs a threshold name bounds: loss -> each variant's loss; numpy.loss -> numpy's."""
    if name in config.PARITY_METRICS:
        return [(BOTH, name)]
    variant, dot, key = name.partition(".")
    return [(variant, key)] if dot else [(each, name) for each in VARIANTS]


def _lookup(metrics: Mapping[str, Any] | None, variant: str, key: str) -> tuple[float | None, str]:
    """The number at (variant, key), or None and why there is none."""
    if variant == BOTH:
        section_name, key = key.split(".", 1)
    else:
        section_name = variant
    section = (metrics or {}).get(section_name)
    if not isinstance(section, Mapping):
        return None, f"missing ({section_name} not in metrics.json)"
    if section.get("diverged") is True:
        return None, f"diverged at epoch {section.get('diverged_at_epoch')}"
    if key not in section:
        return None, "missing"
    value = section[key]
    if value is None:
        return None, "null (no epochs in common)" if variant == BOTH else "null"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None, f"not a number: {value!r}"
    return float(value), ""


def _relative(
    value: float | None, bound: Bound, base_metrics: Mapping[str, Any] | None, variant: str, key: str
) -> tuple[str, bool]:
    """The bound value <= base + max_rel_increase * |base|, as (text, passed)."""
    assert bound.max_rel_increase is not None
    rev, increase = bound.baseline_rev, f"+{bound.max_rel_increase * 100:g}%"
    if base_metrics is None:
        return f"{rev} {increase}: no metrics loaded for {rev}", False
    base, why = _lookup(base_metrics, variant, key)
    if base is None:
        # Nothing to compare with (say the baseline diverged): a value can't be worse than no value,
        # and the absolute bounds still hold it.
        return f"{rev} {increase}: no baseline ({why} at {rev})", value is not None
    limit = base + bound.max_rel_increase * abs(base)
    return f"<= {_number(limit)} ({rev} {_number(base)} {increase})", value is not None and value <= limit


def _number(value: float) -> str:
    return f"{value:.6g}"


def verdict(results: Sequence[Result]) -> str:
    """One line: PASS, or FAIL naming every failed metric and variant."""
    return f"{'PASS' if passed(results) else 'FAIL'}: {_tally(results)}"


def passed(results: Sequence[Result]) -> bool:
    """True when every check passed."""
    return all(result.passed for result in results)


def _tally(results: Sequence[Result]) -> str:
    failed = [result for result in results if not result.passed]
    if not failed:
        return f"all {len(results)} checks passed"
    return f"{len(failed)} of {len(results)} checks failed: {', '.join(failed_names(results))}"


def failed_names(results: Sequence[Result]) -> list[str]:
    """Each failed metric once, with its variant: loss (numpy)."""
    return list(dict.fromkeys(f"{result.metric} ({result.variant})" for result in results if not result.passed))


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _cells(result: Result) -> tuple[str, ...]:
    return (result.metric, result.variant, result.shown, result.bound, "pass" if result.passed else "FAIL")


def format_table(results: Sequence[Result]) -> str:
    """A fixed-width table, one row per check, then the verdict line."""
    rows = [HEADER, *map(_cells, results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([*lines, verdict(results)])


def format_markdown(
    results: Sequence[Result], image: str | None, note: str = "No picture of the loss curves.", comparison: str = ""
) -> str:
    """The same table as GitHub Markdown, for a pull-request comment, then `comparison` (Markdown), then `image` (a
    relative link) or `note`."""
    mark = {True: "✅ pass", False: "❌ **FAIL**"}
    lines = [
        f"## gdpipe quality gate: {'PASS' if passed(results) else 'FAIL'}",
        "",
        _sentence(_tally(results)),
        "",
        "| " + " | ".join(HEADER) + " |",
        "| --- | --- | --- | --- | --- |",
    ]
    for result in results:
        metric, variant, shown, bound, _ = (cell.replace("|", "\\|") for cell in _cells(result))
        lines.append(f"| `{metric}` | {variant} | {shown} | {bound} | {mark[result.passed]} |")
    lines.append("")
    if comparison:
        lines += [comparison.rstrip("\n"), ""]
    lines.append(f"![Loss and w per epoch of both variants]({image})" if image else f"_{note}_")
    return "\n".join(lines) + "\n"


def load_baselines(metrics_path: str | Path, thresholds: Mapping[str, Bound]) -> dict[str, dict]:
    """metrics.json as committed at each revision a relative bound names, read through DVC (as `dvc metrics show`)."""
    revs = sorted({bound.baseline_rev for bound in thresholds.values() if bound.max_rel_increase is not None})
    return {rev: read_metrics_at(metrics_path, rev, "thresholds: baseline_rev") for rev in revs}


def read_metrics_at(path: str | Path, rev: str, asked: str) -> dict:
    """The metrics file at `rev` through `dvc.api.metrics_show`; InputError starting with `asked` if unreadable."""
    # Imported only here: DVC takes a second to import and needs a git repository.
    import dvc.api

    document = _read_at(lambda: dvc.api.metrics_show(str(path), rev=rev), path, rev, asked)
    if not isinstance(document, dict):
        raise InputError(f"{asked} {rev!r}: {path} there is not a metrics file written by the evaluate stage")
    return document


def _read_at(read: Callable[[], Any], path: str | Path, rev: str, asked: str) -> Any:
    """`read()`, a dvc.api call at `rev`; its failures as InputError: "<asked> 'rev' is not a revision ..."."""
    from dvc.exceptions import DvcException
    from dvc.scm import CloneError, RevError

    where, at = asked.rpartition(" ")[::2]  # "thresholds: baseline_rev" -> "thresholds:", "baseline_rev"
    where = f"{where} " if where else ""
    try:
        return read()
    except RevError:
        raise InputError(f"{asked} {rev!r} is not a revision of this git repository") from None
    except CloneError:  # what dvc.api raises outside a git repository
        raise InputError(f"{where}cannot read {path} at {at} {rev!r}: this folder is not in a git repository") from None
    except FileNotFoundError:
        raise InputError(f"{where}{path} does not exist at {at} {rev!r}; commit it there first") from None
    except DvcException as err:
        raise InputError(f"{where}cannot read {path} at {at} {rev!r}: {err}") from None


# --- the comparison with a baseline revision, as `dvc metrics diff` and `dvc params diff` show it ------


def default_baseline() -> str:
    """What the report compares with unless told: the pull request's target branch in CI, else HEAD."""
    target = os.environ.get("GITHUB_BASE_REF")  # set by GitHub Actions on pull requests only
    return f"origin/{target}" if target else "HEAD"


def flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"numpy": {"loss": 1}} -> {"numpy.loss": 1}, as DVC names metrics and params."""
    flat = {}
    for key, value in document.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    if value is MISSING:
        return "-"
    if _is_number(value):
        return _number(value)
    return json.dumps(value) if not isinstance(value, str) else value


def diff_metrics(base: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, baseline, workspace, change) for every metric of either side, by name (`dvc metrics diff --all`)."""
    base, now = flatten(base), flatten(now)
    rows = []
    for name in sorted(base.keys() | now.keys()):
        old, new = base.get(name, MISSING), now.get(name, MISSING)
        change = _number(new - old) if _is_number(old) and _is_number(new) else "-"
        rows.append((name, _shown(old), _shown(new), change))
    return rows


def diff_params(base: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(param, baseline, workspace) for each param that differs, sorted by name: `dvc params diff`."""
    base, now = flatten(base), flatten(now)
    names = sorted(name for name in base.keys() | now.keys() if base.get(name, MISSING) != now.get(name, MISSING))
    return [(name, _shown(base.get(name, MISSING)), _shown(now.get(name, MISSING))) for name in names]


def compare(rev: str, metrics_path: str, metrics: Mapping[str, Any], params_path: str, asked: str) -> Comparison:
    """The metrics and params at `rev` against these; InputError (starting with `asked`) if `rev` cannot be read."""
    import dvc.api

    base_metrics = read_metrics_at(metrics_path, rev, asked)
    base_params = _read_at(lambda: dvc.api.params_show(params_path, rev=rev), params_path, rev, asked)
    now_params = _read_at(lambda: dvc.api.params_show(params_path), params_path, "workspace", asked)
    return Comparison(rev, diff_metrics(base_metrics, metrics), diff_params(base_params, now_params))


@dataclass(frozen=True)
class Comparison:
    """What changed since a baseline revision: every metric (diff_metrics) and the params that differ (diff_params)."""

    rev: str
    metrics: list[tuple[str, str, str, str]]
    params: list[tuple[str, str, str]]

    def summary(self) -> str:
        """2 of 19 metrics changed, 1 param differs."""
        changed = sum(1 for _, old, new, change in self.metrics if old != new or change not in ("0", "-"))
        params = f"{len(self.params)} param{'s differ' if len(self.params) != 1 else ' differs'}"
        return f"{changed} of {len(self.metrics)} metrics changed, {params}"

    def markdown(self, metrics_path: str, params_path: str) -> str:
        """As `dvc metrics diff --md --all` and `dvc params diff --md` lay them out, numbers to 6 significant digits."""
        lines = [f"### Compared with {self.rev}", "", _sentence(self.summary()), ""]
        header = ("Path", "Metric", self.rev, "workspace", "Change")
        lines += _md_table(header, [(metrics_path, *row) for row in self.metrics])
        if self.params:
            header = ("Path", "Param", self.rev, "workspace")
            lines += ["", *_md_table(header, [(params_path, *row) for row in self.params])]
        return "\n".join(lines) + "\n"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    escape = [[cell.replace("|", "\\|") for cell in row] for row in [header, *rows]]
    separator = ["---"] * len(header)
    return ["| " + " | ".join(row) + " |" for row in [escape[0], separator, *escape[1:]]]


def copy_plot(plot: Path, report: Path) -> str | None:
    """Copy the curves next to the report (report name, .png) so a relative link finds them; None if there are none."""
    try:
        picture = plot.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise InputError(f"{plot}: cannot read: {err}") from None
    target = report.with_suffix(".png")
    write_bytes(target, picture)
    return target.name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="its thresholds section holds the bounds")
    parser.add_argument("--metrics", default="metrics.json", help="written by the evaluate stage")
    parser.add_argument("--plot", default="plots/curves.png", help="the loss curves the report shows")
    report_help = "the Markdown report; the picture (.png) and the verdict (.json) go beside it"
    parser.add_argument("--report", default="reports/check.md", help=report_help)
    baseline_help = (
        "the git revision the report compares metrics and params with (default: $GDPIPE_BASELINE, else "
        "origin/$GITHUB_BASE_REF on a pull request in GitHub Actions, else HEAD)"
    )
    parser.add_argument("--baseline", default=os.environ.get("GDPIPE_BASELINE") or None, help=baseline_help)
    args = parser.parse_args(argv)
    params = config.load(args.params)
    metrics = read_json(args.metrics)
    if not isinstance(metrics, dict):
        raise InputError(f"{args.metrics}: not a metrics file written by the evaluate stage (expected a JSON object)")
    results = check(metrics, params.thresholds, load_baselines(args.metrics, params.thresholds))
    rev = args.baseline or default_baseline()
    try:
        changes = compare(rev, args.metrics, metrics, args.params, "--baseline" if args.baseline else "baseline")
        comparison, compared = changes.markdown(args.metrics, args.params), f"compared with {rev}: {changes.summary()}"
    except InputError as err:
        if args.baseline:  # named by the user: a typo must not pass unnoticed
            raise
        # The default baseline may not exist (a first commit, a shallow clone): the report says so, the gate goes on.
        comparison, compared = f"### Compared with {rev}\n\n_No comparison: {err}._\n", f"no comparison: {err}"
    report = Path(args.report)
    image = copy_plot(Path(args.plot), report)
    note = f"No picture: {args.plot} does not exist (run dvc repro)."
    with atomic_write(report) as handle:
        handle.write(format_markdown(results, image, note, comparison))
    verdict = {"passed": passed(results), "failed": failed_names(results), "metrics_sha256": file_sha256(args.metrics)}
    write_json(report.with_suffix(".json"), verdict)
    print(format_table(results))
    print(compared)
    print(f"report: {report}" + ("" if image else f" ({note})"))
    return 0 if passed(results) else EXIT_FAILED


if __name__ == "__main__":
    run_command(main)
