"""Reading recipes and sweep files: PyYAML's findings on one line, the file named."""

from __future__ import annotations

import pytest
import yaml

from rsvlm.contracts import MissingFileError
from rsvlm.io.yaml_file import YamlFileError, read_yaml, yaml_error_reason

BROKEN = {
    "model: [unclosed\n": "expected ',' or ']'",
    "a: 1\n b: 2\n": "mapping values are not allowed here",
    "key: 'open\n": "found unexpected end of stream",
}


def test_a_valid_file_reads_as_pyyaml_reads_it(tmp_path):
    text = "seed_everything: 0\nmodel:\n  class_path: rsvlm.models.Vlm\n  init_args: {lr: 1.0e-4, bands: [red, nir]}\n"
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    assert read_yaml(path) == yaml.safe_load(text)
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml(tmp_path / "empty.yaml") is None


@pytest.mark.parametrize("text", list(BROKEN))
def test_a_syntax_error_is_one_line_with_pyyamls_problem_and_position(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(yaml.MarkedYAMLError) as reference:
        yaml.safe_load(text)
    mark = reference.value.problem_mark
    with pytest.raises(YamlFileError) as caught:
        read_yaml(path, "sweep file")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: the sweep file is not valid YAML: {reference.value.problem}")
    assert message.endswith(f"(line {mark.line + 1}, column {mark.column + 1})")
    assert BROKEN[text] in message


def test_missing_unreadable_and_unmarked_errors(tmp_path):
    with pytest.raises(MissingFileError, match=r"recipe .*nowhere\.yaml does not exist"):
        read_yaml(tmp_path / "nowhere.yaml")
    with pytest.raises(YamlFileError, match=rf"{tmp_path}: cannot read the recipe"):
        read_yaml(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlFileError, match=r"latin\.yaml: cannot read the recipe: .*utf-8"):
        read_yaml(latin)
    assert yaml_error_reason(yaml.YAMLError("first\n  second")) == "first second"
