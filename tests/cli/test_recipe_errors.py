"""A recipe that does not parse, or whose component refuses its arguments, is one line naming the
recipe file and the field: through ``run_lightning_cli`` (a RecipeError) and through ``rsvlm``
(``rsvlm: error: …``, status 2; ``--debug`` keeps jsonargparse's or the constructor's exception
as the cause). Every case runs the real CLI on the shipped demo recipe with one value spoiled; the
expected field is where the test spoiled it.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from jsonargparse import ArgumentError

from rsvlm.cli.lightning import run_lightning_cli
from rsvlm.cli.main import main
from rsvlm.fusion.msam import MSAM
from rsvlm.io.recipe_errors import (
    RecipeError,
    class_paths,
    condense_parse_error,
    constructor_exception,
    recipe_sources,
)

RECIPE = REPO / "recipes" / "spex-demo.yaml"


def _spoiled(tmp_path: Path, *path: str, value) -> Path:
    """The demo recipe with ``value`` at ``path`` (created where missing), written to bad.yaml."""
    recipe = yaml.safe_load(RECIPE.read_text())
    node = recipe
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    return bad


def _error(args: list[str]) -> str:
    with pytest.raises(RecipeError) as error:
        run_lightning_cli(args)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_an_unknown_kv_cache_is_refused_when_the_recipe_is_read(tmp_path):
    """A misspelt cache stops the run at parsing, not at the first generation after training."""
    bad = _spoiled(tmp_path, "model", "init_args", "generation", "cache_implementation", value="statc")
    message = _error(["fit", "--config", str(bad), "--print_config"])
    assert message.startswith(f"{bad}: model.init_args.generation.cache_implementation: ")
    assert "'dynamic', 'static'" in message, message


def test_a_value_outside_a_literal_names_the_field_and_every_choice(tmp_path):
    bad = _spoiled(tmp_path, "model", "init_args", "fusion", "init_args", "form", value="papr")
    message = _error(["fit", "--config", str(bad), "--print_config"])
    assert message.startswith(f"{bad}: model.init_args.fusion.init_args.form: ")
    choices = typing.get_args(typing.get_type_hints(MSAM.__init__)["form"])
    assert choices and all(f"'{choice}'" in message for choice in choices), message
    assert "papr" in message


def test_a_command_line_override_of_the_wrong_type_names_the_field_and_the_value():
    message = _error(["fit", "--config", str(RECIPE), "--trainer.max_epochs", "abc", "--print_config"])
    assert message == f"{RECIPE}: trainer.max_epochs: Expected a <class 'int'> (given: abc)"


@pytest.mark.parametrize("recipe", ["geomag-demo.yaml", "earthgptx-demo.yaml"])
def test_a_generated_scene_setting_of_the_wrong_type_names_the_field(recipe):
    # The scene preparers' fields once resolved to "any value" (their base's postponed ClassVar
    # annotations), so a wrong type went through to a TypeError deep in the generator.
    path = REPO / "recipes" / recipe
    field = "data.init_args.generate.init_args.n_train"
    message = _error(["fit", "--config", str(path), f"--{field}", "many", "--print_config"])
    assert message.startswith(f"{path}: {field}: "), message
    assert "many" in message


def test_an_unknown_component_inside_a_wrapper_names_the_inner_field():
    override = ["--model.init_args.decoder.init_args.decoder.class_path", "rsvlm.heads.nope.Nope"]
    message = _error(["fit", "--config", str(RECIPE), *override, "--print_config"])
    assert message.startswith(
        f"{RECIPE}: model.init_args.decoder.init_args.decoder: class_path 'rsvlm.heads.nope.Nope'"
    )
    assert "'nope'" in message  # the import failure's own reason


def test_missing_weights_name_the_component_that_wanted_them(tmp_path):
    missing = tmp_path / "sam_vit_b_missing.pth"
    override = ["--model.init_args.decoder.init_args.decoder.init_args.checkpoint", str(missing)]
    with pytest.raises(RecipeError) as error:
        run_lightning_cli(["fit", "--config", str(RECIPE), *override])
    message = str(error.value)
    assert message.startswith(
        f"{RECIPE}: model.init_args.decoder.init_args.decoder (rsvlm.heads.sam_decoder.SamMaskDecoderHead) "
        "could not be built: MissingFileError: "
    )
    assert str(missing) in message and "\n" not in message
    # The constructor's own exception stays reachable for --debug.
    assert isinstance(constructor_exception(error.value.__cause__), FileNotFoundError)


def test_a_trainer_that_refuses_its_arguments_is_named():
    with pytest.raises(
        RecipeError, match=r"spex-demo\.yaml: trainer \(Trainer\) could not be built: .*no_such_strategy"
    ):
        run_lightning_cli(["fit", "--config", str(RECIPE), "--trainer.strategy", "no_such_strategy"])


def test_rsvlm_prints_one_line_and_exits_2_and_debug_keeps_the_parser_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RSVLM_DEBUG", raising=False)
    bad = _spoiled(tmp_path, "data", "init_args", "batch_sise", value=3)
    assert main(["fit", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    field = "data.init_args.batch_sise"
    assert err == f"rsvlm: error: {bad}: {field}: not an argument of rsvlm.data.spie.datamodule.SpieDataModule\n"

    with pytest.raises(RecipeError) as error:
        main(["fit", "--config", str(bad), "--debug"])
    assert isinstance(error.value.__cause__, ArgumentError)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["fit", "--config", "a.yaml"], "a.yaml"),
        (["fit", "-c", "a.yaml", "--config=b.yaml"], "a.yaml + b.yaml"),
        (["fit", "--trainer.max_epochs", "3"], "the command line"),
    ],
)
def test_recipe_sources(args, expected):
    assert recipe_sources(args) == expected


def test_a_message_of_another_shape_is_folded_into_one_line():
    assert condense_parse_error("Key 'data' is required\n  by the parser") == (
        None,
        "Key 'data' is required by the parser",
    )


def test_a_recipe_that_is_not_there_names_it(tmp_path):
    gone = tmp_path / "gone.yaml"
    message = _error(["fit", "--config", str(gone)])
    assert message.startswith(f"{gone}: config: ") and message.count(str(gone)) == 2, message


class Picky:
    """A component whose constructor refuses a value while handling another exception."""

    def __init__(self, size: int = 1):
        try:
            {"size 1": 1}[f"size {size}"]
        except KeyError:
            raise ValueError(f"Picky: size {size} is not allowed") from None


def test_parse_and_build_names_the_component_and_keeps_its_own_exception():
    from jsonargparse import ArgumentParser

    from rsvlm.io.recipe_errors import parse_and_build

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Picky, "part")
    path = f"{Picky.__module__}.{Picky.__qualname__}"
    built = parse_and_build(parser, {"part": {"class_path": path, "init_args": {"size": 1}}}, "r.yaml")
    assert isinstance(built.part, Picky)
    with pytest.raises(RecipeError) as error:
        parse_and_build(parser, {"part": {"class_path": path, "init_args": {"size": 3}}}, "r.yaml")
    # Not the KeyError the constructor was handling: that is its own business.
    assert str(error.value) == f"r.yaml: part ({path}) could not be built: ValueError: Picky: size 3 is not allowed"
    with pytest.raises(RecipeError, match=r"^r\.yaml: part\.init_args\.size: Expected a <class 'int'>"):
        parse_and_build(parser, {"part": {"class_path": path, "init_args": {"size": "big"}}}, "r.yaml")


def test_every_component_a_shipped_recipe_names_has_arguments_jsonargparse_validates():
    """An annotation jsonargparse cannot resolve makes the argument Unvalidated: any value passes the
    recipe and fails (or not) somewhere inside the component, with no field named."""
    import importlib

    from jsonargparse import ArgumentParser

    named = {
        path
        for recipe in (REPO / "recipes").rglob("*.yaml")
        for _, path in class_paths(yaml.safe_load(recipe.read_text()))
    }
    assert len(named) > 30  # components, callbacks, datamodules, the generated-scene preparers
    unvalidated = {}
    for class_path in sorted(named):
        module, name = class_path.rsplit(".", 1)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(getattr(importlib.import_module(module), name), "x", fail_untyped=False)
        fields = [a.dest for a in parser._actions if "Unvalidated" in str(getattr(a, "_typehint", ""))]
        if fields:
            unvalidated[class_path] = fields
    assert unvalidated == {}
