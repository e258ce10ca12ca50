"""params.yaml from anywhere (hypothesis): any file loads into a valid Params or exits 2 with one short line
naming the key, writing nothing; no YAML tag runs code."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from gdpipe.core import config
from support import REPO, assert_one_error_line, files_under, load_default_params, run_stage, stage

SECTIONS = {
    name: sorted(field.annotation.model_fields)
    for name, field in config.Params.model_fields.items()
    if name != "thresholds"
}
LEAVES = [f"{section}.{key}" for section, keys in SECTIONS.items() for key in keys if key not in ("numpy", "torch")]
LEAVES += [
    "train.numpy.gradient",
    "train.torch.device",
    "thresholds.loss",
    "thresholds.loss.max",
    "thresholds.abs_error.max",
]
PATHS = [*config.Params.model_fields, *LEAVES, "train.numpy", "train.torch"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**30), 2**63, 0, -1]),
    st.floats(),  # NaN, infinities, subnormals, huge
    st.sampled_from([1e308, -1e308, 5e-324, 3.5e38, 1e39, 1e-46]),
    st.text(max_size=20),
    st.text(alphabet="\n\t\"'#:{}[],&*!|>%@`\\ \x85\u2028", max_size=8),
    st.sampled_from(["x" * 2000, "1e-3", "0x10", ".inf", "NaN", "yes", "null", "~", "mean", "cuda"]),
)
garbage = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=4),
    max_leaves=12,
)


def _set(document: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        document = document[key]
    document[last] = value


def _delete(document: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        document = document[key]
    del document[last]


@st.composite
def malformed_params(draw):
    """(YAML text, the key as the error must name it, or None): one change to the repository's params.yaml."""
    document = load_default_params()
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "extra", "top", "text"]))
    if kind == "text":  # raw text: a YAML tag, a truncated file, deep nesting, a broken line
        text = (REPO / "params.yaml").read_text()
        lines = text.splitlines(keepends=True)
        tag = draw(
            st.sampled_from(
                [
                    "!!python/object/apply:os.system ['touch pwned']",
                    "!!python/name:os.system",
                    "!!python/object/new:dict []",
                    "!custom 1",
                    "!!binary aGVsbG8=",
                    "!!set {a, b}",
                    "!!timestamp 2001-12-14",
                    "!!float nan",
                    "!!int 1e3",
                    "[" * 600 + "]" * 600,  # deep, within the limit Hypothesis sets; beyond it: [nested] above
                    "{a: " * 2000 + "1" + "}" * 2000,
                    "9" * 5000,
                    "&a [*a]",
                    "*undefined",
                    "'unclosed",
                ]
            )
        )
        target = draw(
            st.sampled_from([i for i, line in enumerate(lines) if ": " in line and not line.lstrip().startswith("#")])
        )
        key_text = lines[target].partition(": ")[0]
        mutated = [*lines[:target], f"{key_text}: {tag}\n", *lines[target + 1 :]]
        if draw(st.booleans()):
            mutated = ["".join(mutated)[: draw(st.integers(0, len(text)))]]
        return "".join(mutated), None
    if kind == "top":
        return _dump(draw(st.one_of(garbage, st.just(None), st.just("")))), None
    path = draw(st.sampled_from(PATHS))
    if kind == "set":
        _set(document, path, draw(garbage))
    elif kind == "delete":
        _delete(document, path)
    else:
        section = draw(
            st.sampled_from([None, *config.Params.model_fields, "train.numpy", "train.torch", "thresholds.loss"])
        )
        name = draw(st.text(min_size=1, max_size=12) | st.integers() | st.sampled_from([None, True, 1.5]))
        parent = document
        for part in section.split(".") if section else []:
            parent = parent[part]
        if name in parent:
            return _dump(document), None
        known = set(parent)
        parent[name] = draw(garbage)
        text = _dump(document)
        reloaded = YAML(typ="safe").load(text)  # YAML may read a key back otherwise ("\x85" is a line break)
        for part in section.split(".") if section else []:
            reloaded = reloaded[part]
        (name,) = set(reloaded) - known or {None}
        if name is None:
            return text, None
        dotted = f"{section}.{name}" if section else str(name)
        if section == "thresholds":  # a bad metric name is named alone, bad keys inside its bound under it
            return text, (repr(name), repr(dotted)[1:-1])
        return text, repr(name) if not isinstance(name, str) else repr(dotted)[1:-1]
    return _dump(document), path


def _dump(document: object) -> str:
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(malformed_params())
@example(
    ((REPO / "params.yaml").read_text().replace("epochs: 100", "epochs: " + "9" * 5000), None)
)  # beyond int()'s digit limit
@example(((REPO / "params.yaml").read_text() + "1: 2\n", "1"))  # keys that are not strings
@example(((REPO / "params.yaml").read_text() + "null: 2\n", "None"))
@example(
    ((REPO / "params.yaml").read_text().replace("lr: 0.01 ", f"lr: '{'y' * 100_000}' "), "train.lr")
)  # a pasted blob
@example(
    ((REPO / "params.yaml").read_text().replace("  loss: {max", f"  {'z' * 1000}: {{max"), "thresholds")
)  # YAML's longest plain key
def test_malformed_params_load_or_fail_with_one_line_naming_the_key(case):
    """Any params.yaml either loads into a valid Params or exits 2 with one short line naming the key; nothing is
    written.
    """
    text, key = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(text)
        code, stderr = run_stage(config.main, [str(path)])
        if code == 0:
            assert stderr == ""
            params = config.load(path)
            assert config.Params.model_validate(params.model_dump(exclude_unset=True)) == params
            return
        assert code == 2
        assert_one_error_line(stderr, str(path))
        assert len(stderr) < 600, f"{len(stderr)} characters: {stderr[:300]}"
        if key is not None:
            # The key itself, or its section when a rule about the whole section broke ("thresholds.loss: sets no
            # bound").
            names = key if isinstance(key, tuple) else (key,)
            named = [name for name in names if name[:40] in stderr or f": {name.rpartition('.')[0]}: " in stderr]
            assert named, (key, stderr)
        out = Path(folder) / "out" / "dataset.npy"
        assert run_stage(stage("generate").main, ["--params", str(path), "--out", str(out)]) == (code, stderr)
        assert files_under(Path(folder)) == [path]
        assert not Path("pwned").exists()


def test_a_yaml_tag_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for tag in (
        "!!python/object/apply:os.system",
        "!!python/object/apply:subprocess.call",
        "!!python/object/new:os.system",
    ):
        params = tmp_path / "params.yaml"
        params.write_text(
            (REPO / "params.yaml")
            .read_text()
            .replace("experiment: gradient-descent", f"experiment: {tag} [touch {marker}]")
        )
        code, stderr = run_stage(config.main, [str(params)])
        assert code == 2 and not marker.exists()
        assert_one_error_line(stderr, str(params), "could not determine a constructor for the tag")
