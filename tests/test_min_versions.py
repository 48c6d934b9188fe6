"""The minimum-versions pin list (requirements/min_versions.py, used by .ci/min-versions)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO, declared_requirements
from packaging.requirements import Requirement
from packaging.version import Version


def _module():
    spec = importlib.util.spec_from_file_location("min_versions", REPO / "requirements" / "min_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_pin_is_the_declared_lower_bound():
    pins = _module().min_requirements(extras=("dev",))
    declared = declared_requirements()
    assert len(pins) == len(declared)
    for original, pinned in zip(declared, pins):
        req, pin = Requirement(original), Requirement(pinned)
        assert (pin.name, pin.extras) == (req.name, req.extras)
        (clause,) = pin.specifier
        assert clause.operator == "==" and clause.version in req.specifier  # the pin satisfies the bound
        lower = [s for s in req.specifier if s.operator in (">=", "==")]
        assert Version(clause.version) == Version(lower[0].version)  # and is its lowest version


def test_checked_in_pin_list_is_up_to_date():
    module = _module()
    assert (REPO / "requirements" / "min.txt").read_text() == module.render(module.min_requirements(extras=("dev",)))
    assert module.main(["--check", str(REPO / "requirements" / "min.txt")]) == 0


def test_pin_rules_and_errors(tmp_path):
    module = _module()
    assert module.pin("torch>=2.2") == "torch==2.2"
    assert module.pin("jsonargparse[signatures] >= 4.32, <5") == "jsonargparse[signatures]==4.32"
    assert module.pin("ruff==0.17.6") == "ruff==0.17.6"
    for bad, reason in (
        ("numpy", "no lower bound"),
        ("numpy<2", "no lower bound"),
        ("tomli>=2; python_version<'3.11'", "markers"),
    ):
        with pytest.raises(module.MinVersionError, match=reason):
            module.pin(bad)
    stale = tmp_path / "min.txt"
    stale.write_text("torch==2.1\n")
    assert module.main(["--check", str(stale)]) == 1
