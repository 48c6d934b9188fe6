"""Every shipped recipe and every ablation cell parses with the `rsvlm` command's parser, and a
misspelt key fails at parse time naming it."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from rsvlm.cli.lightning import run_lightning_cli
from rsvlm.experiments.sweep import expand_grid, load_sweep, resolve_config

RECIPES = REPO / "recipes"


def print_config(config: Path) -> dict:
    """Parse ``config`` like ``rsvlm fit --config CONFIG --print_config`` and return the result."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None), out.getvalue()
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_parses(recipe: Path):
    parsed = print_config(recipe)
    source = yaml.safe_load(recipe.read_text())
    assert parsed["model"]["class_path"] == source["model"]["class_path"]
    assert parsed["data"]["class_path"] == source["data"]["class_path"]


@pytest.mark.parametrize("sweep", sorted((RECIPES / "ablations").glob("*/*.yaml")), ids=lambda p: p.name)
def test_every_ablation_cell_parses(sweep: Path, tmp_path: Path):
    spec = load_sweep(sweep, out=tmp_path)
    for run in expand_grid(spec):
        config = resolve_config(spec.base, run.overrides)
        path = tmp_path / f"{run.name}.yaml"
        path.write_text(yaml.safe_dump(config))
        print_config(path)


def test_misspelt_key_is_named(tmp_path: Path):
    recipe = yaml.safe_load((RECIPES / "spex-demo.yaml").read_text())
    recipe["model"]["init_args"]["bridge"]["init_args"]["num_tokenz"] = 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", str(bad), "--print_config"])
    assert exit_info.value.code != 0
    assert "num_tokenz" in err.getvalue()


def test_unknown_component_is_named(tmp_path: Path):
    recipe = yaml.safe_load((RECIPES / "spex-demo.yaml").read_text())
    recipe["model"]["init_args"]["fusion"]["class_path"] = "rsvlm.fusion.msam.MSAMM"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        run_lightning_cli(["fit", "--config", str(bad), "--print_config"])
    assert "MSAMM" in err.getvalue()
