"""Results roots (tarpo.layout): the marker that gives a root to one config file, and an unmoved old tree."""

from __future__ import annotations

import json

import pytest

from tarpo.errors import ConfigError
from tarpo.layout import MARKER, claim_root, config_file_id, default_results_page, old_layout, results_root


def test_a_root_is_named_by_the_config():
    assert results_root("smoke") == "results/smoke"
    assert default_results_page("paper") == "results/paper/figures/tables/results.md"


def test_the_first_claim_writes_the_marker_and_the_same_file_may_claim_again(tmp_path):
    root = tmp_path / "results" / "smoke"
    claim_root(root, "config/smoke.yaml", "smoke", write=False)  # a dry run: checks, writes nothing
    assert not root.exists()
    claim_root(root, "config/smoke.yaml", "smoke", write=True)
    marker = json.loads((root / MARKER).read_text())
    assert marker["config"] == "config/smoke.yaml" and marker["name"] == "smoke" and marker["claimed"]
    before = (root / MARKER).read_text()
    claim_root(root, "./config/smoke.yaml", "smoke", write=True)  # the same file: fine, the marker unchanged
    assert (root / MARKER).read_text() == before


def test_another_config_file_with_the_same_name_is_refused_naming_both_and_the_fix(tmp_path):
    root = tmp_path / "results" / "smoke"
    claim_root(root, "config/smoke.yaml", "smoke", write=True)
    for write in (False, True):
        with pytest.raises(ConfigError) as err:
            claim_root(root, "config/smoke-copy.yaml", "smoke", write=write)
        message = str(err.value)
        assert message == (
            f"{root}/ holds the results of config/smoke.yaml (name: smoke), not of config/smoke-copy.yaml: two "
            "config files with `name: smoke` would overwrite each other's results. Give config/smoke-copy.yaml "
            "another `name` (its results go to results/NAME/); or, if config/smoke-copy.yaml is that config moved "
            f"or renamed, delete {root / MARKER}")
    assert json.loads((root / MARKER).read_text())["config"] == "config/smoke.yaml"  # never taken over
    (root / MARKER).write_text("{not json")
    with pytest.raises(ConfigError, match="holds the results of an unreadable marker"):
        claim_root(root, "config/smoke.yaml", "smoke", write=True)


def test_a_config_file_is_named_relative_to_the_working_directory(tmp_path):
    assert config_file_id("config/x.yaml", tmp_path) == "config/x.yaml"
    assert config_file_id("./config/../config/x.yaml", tmp_path) == "config/x.yaml"
    assert config_file_id(tmp_path / "config" / "x.yaml", tmp_path) == "config/x.yaml"


def test_an_unmoved_old_tree_is_found_and_a_root_named_like_it_is_not(tmp_path):
    results = tmp_path / "results"
    assert old_layout(results) == []
    (results / "backbones" / "tiny").mkdir(parents=True)
    (results / "default" / "data").mkdir(parents=True)  # a root's data/: not the old layout
    assert old_layout(results) == [f"{results}/backbones"]
    (results / "backbones" / MARKER).write_text("{}")  # a config named `backbones` owns it
    assert old_layout(results) == []
