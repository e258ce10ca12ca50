"""The quality gate: hold metrics.json to params.yaml's thresholds, report the result, fail the build.

    python -m gdpipe.gate --params params.yaml --metrics metrics.json --plot plots/curves.png --report reports/check.md

Prints one row per check (metric, variant, value, bound, result), writes the same as Markdown for a
pull-request comment with the loss curves beside it and the verdict as JSON beside that (what
`make promote` reads; the gate never talks to MLflow), and exits 0 when every check passes, 1 when any
fails, 2 when the input is bad (invalid thresholds, no metrics.json, an unknown baseline revision).
Every variant must also have trained without diverging: that check needs no threshold. The report
also compares every metric and the params that differ with a baseline revision (--baseline; by default
origin/$GITHUB_BASE_REF on a pull request in CI, else HEAD): the tables are `dvc metrics diff --md` and
`dvc params diff --md`; the baseline a relative bound reads is metrics.json as git holds it there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
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
    """metrics.json as committed at each revision a relative bound names (metrics.json is not cached: git holds it)."""
    revs = sorted({bound.baseline_rev for bound in thresholds.values() if bound.max_rel_increase is not None})
    return {rev: read_metrics_at(metrics_path, rev, "thresholds: baseline_rev") for rev in revs}


def read_metrics_at(path: str | Path, rev: str, asked: str) -> dict:
    """The metrics file committed at `rev`; InputError starting with `asked` if it cannot be read."""
    text = _git_file_at(path, rev, asked)
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise InputError(f"{asked} {rev!r}: {path} there is not a metrics file written by the evaluate stage")
    return document


def _git_file_at(path: str | Path, rev: str, asked: str) -> str:
    """`path` (relative to this folder) as committed at `rev`, through git; its failures as InputError:
    "<asked> 'rev' is not a revision ...", "... does not exist at <rev>; commit it there first"."""
    where, at = _places(asked)
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        raise InputError(f"{where}cannot read {path} at {at} {rev!r}: this folder is not in a git repository")
    if rev.startswith("-") or _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode != 0:
        raise InputError(f"{asked} {rev!r} is not a revision of this git repository")
    shown = _git("cat-file", "blob", f"{rev}:./{os.path.relpath(path)}")
    if shown.returncode != 0:
        raise InputError(f"{where}{path} does not exist at {at} {rev!r}; commit it there first")
    return shown.stdout


def _places(asked: str) -> tuple[str, str]:
    """Where an error starts and what the revision was called: ("thresholds: ", "baseline_rev") or ("", "baseline")."""
    where, _, at = asked.rpartition(" ")
    return (f"{where} " if where else ""), at


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, encoding="utf-8")


# --- the comparison with a baseline revision: `dvc metrics diff` and `dvc params diff` ------------

# Decimal places DVC rounds metrics to in the report (its default, 5, shows a loss of 1e-12 as 0.0):
# 18 shows the lesson's loss, 8.98837e-13, to the 6 significant digits the gate prints.
PRECISION = 18


def default_baseline() -> str:
    """What the report compares with unless told: the pull request's target branch in CI, else HEAD."""
    target = os.environ.get("GITHUB_BASE_REF")  # set by GitHub Actions on pull requests only
    return f"origin/{target}" if target else "HEAD"


def compare(rev: str, metrics_path: str, params_path: str, asked: str) -> Comparison:
    """The metrics and params at `rev` against the workspace's; InputError (starting with `asked`) if `rev` cannot be
    read."""
    for path in (metrics_path, params_path):  # the same checks and messages as the gate's own baseline
        _git_file_at(path, rev, asked)
    where, at = _places(asked)

    def dvc(command: str, path: str, *options: str) -> str:
        argv = [sys.executable, "-m", "dvc", command, "diff", rev, "--targets", path, *options]
        done = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8")
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"dvc {command} diff exited with {done.returncode}"])[-1]
            raise InputError(f"{where}cannot read {path} at {at} {rev!r}: {why.removeprefix('ERROR: ')}")
        return done.stdout

    metrics = json.loads(dvc("metrics", metrics_path, "--all", "--json"))
    params = json.loads(dvc("params", params_path, "--json"))
    tables = [dvc("metrics", metrics_path, "--all", "--md", "--precision", str(PRECISION))]
    if params:
        tables.append(dvc("params", params_path, "--md"))
    return Comparison(rev, metrics, params, "\n".join(table.strip("\n") + "\n" for table in tables))


@dataclass(frozen=True)
class Comparison:
    """What changed since a baseline revision, as DVC reports it."""

    rev: str
    metrics: Mapping[str, Mapping[str, Mapping[str, Any]]]  # `dvc metrics diff --all --json`: path, name, old, new
    params: Mapping[str, Mapping[str, Mapping[str, Any]]]  # `dvc params diff --json`: only the params that differ
    tables: str  # both as `dvc metrics diff --all --md` and `dvc params diff --md` lay them out

    def summary(self) -> str:
        """2 of 19 metrics changed, 1 param differs."""
        metrics = [row for rows in self.metrics.values() for row in rows.values()]
        changed = sum(1 for row in metrics if row.get("old") != row.get("new"))
        count = sum(len(rows) for rows in self.params.values())
        return f"{changed} of {len(metrics)} metrics changed, {count} param{'s differ' if count != 1 else ' differs'}"

    def markdown(self) -> str:
        """A heading naming the revision, the summary, then DVC's tables."""
        return f"### Compared with {self.rev}\n\n{_sentence(self.summary())}\n\n{self.tables}"


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
        changes = compare(rev, args.metrics, args.params, "--baseline" if args.baseline else "baseline")
        comparison, compared = changes.markdown(), f"compared with {rev}: {changes.summary()}"
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
