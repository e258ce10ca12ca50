"""The quality gate: thresholds in params.yaml."""

from __future__ import annotations

import json
from pathlib import Path

from ruamel.yaml import YAML

from gdpipe import config
from gdpipe.config import Bound

REPO = Path(__file__).resolve().parents[1]

DEFAULTS = {"abs_error": Bound(max=0.01), "loss": Bound(max=1.0e-4), "parity.max_abs_w_diff": Bound(max=1.0e-5)}


def params_yaml(thresholds: str | None) -> str:
    """This project's params.yaml with its thresholds section replaced by the YAML text given (None: left out)."""
    document = YAML(typ="safe").load((REPO / "params.yaml").read_text(encoding="utf-8"))
    # JSON is YAML 1.2: the other sections are kept exactly, the thresholds text is the case under test.
    lines = [f"{section}: {json.dumps(value)}" for section, value in document.items() if section != "thresholds"]
    return "\n".join(lines + ([thresholds] if thresholds is not None else [])) + "\n"


# --- the thresholds in params.yaml ---------------------------------------------------------------


def test_params_yaml_ships_the_issues_default_bounds():
    assert config.load(REPO / "params.yaml").thresholds == DEFAULTS


def test_leaving_the_section_out_gives_the_same_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text(params_yaml(None))
    assert config.load(tmp_path / "params.yaml").thresholds == DEFAULTS


def test_thresholds_name_metrics_for_every_variant_one_variant_or_the_parity(tmp_path):
    text = "thresholds: {w: {min: 1.9, max: 2.1}, torch.loss: {max_rel_increase: 0.1, baseline_rev: main}, parity.max_abs_w_diff: {max: 0}}"
    (tmp_path / "params.yaml").write_text(params_yaml(text))
    assert config.load(tmp_path / "params.yaml").thresholds == {
        "w": Bound(min=1.9, max=2.1),
        "torch.loss": Bound(max_rel_increase=0.1, baseline_rev="main"),
        "parity.max_abs_w_diff": Bound(max=0.0),
    }
