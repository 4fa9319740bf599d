"""Config loading: schema defaults, every problem reported, cross-key checks."""

from __future__ import annotations

import pytest
import yaml

from deltarad.config import ConfigError, config_hash, load_config, with_defaults
from tests.conftest import CONFIGS


def test_default_config_is_valid_and_complete():
    config = load_config(CONFIGS[0])
    assert config["cohort"]["source"] == "synthetic"
    assert config["validation"]["geometry_tolerance"]["origin_mm"] == pytest.approx(1e-3)
    assert [c["name"] for c in config["synthetic"]["centers"]] == ["C1", "C2", "C3", "C4"]


def test_test_config_overrides_only_what_it_names(tiny_config):
    assert tiny_config["synthetic"]["patients_per_center"] == 3
    assert tiny_config["synthetic"]["misregistration"]["rotation_deg"] == 5.0
    assert tiny_config["study"]["external_centers"] == ["C2"]


def test_defaults_fill_nested_blocks_and_list_items():
    config = with_defaults({"synthetic": {"centers": [{"name": "X"}]}})
    assert config["synthetic"]["centers"][0]["noise"] == 10.0
    assert config["synthetic"]["misregistration"]["deformation_mm"] == 3.0
    assert config["results"] == "results"


def _write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"bogus": 1}, "Additional properties are not allowed ('bogus'"),
        ({"synthetic": {"patients_per_center": "many"}}, "'synthetic.patients_per_center'"),
        ({"synthetic": {"contrast": "US"}}, "'synthetic.contrast'"),
        ({"study": {"external_centers": ["C9"]}}, "centre 'C9' is not one of the known"),
        ({"cohort": {"source": "sheets"}}, "'cohort.samples': required when cohort.source"),
        ({"synthetic": {"centers": [{"name": "A"}, {"name": "A"}]}}, "names must be unique"),
        (
            {"cohort": {"channels": ["T2", "ADC"], "reference_channel": "DWI"}},
            "'cohort.reference_channel': 'DWI' is not one of cohort.channels ['T2', 'ADC']",
        ),
        ({"cohort": {"channels": ["T2_ax"]}}, "'cohort.channels.0'"),
        (
            {"synthetic": {"extra_channels": [{"name": "CT", "contrast": "PET"}]}},
            "channel names must differ",
        ),
        (
            {"synthetic": {"mid_treatment_days": [50, 70]}},
            "'synthetic.mid_treatment_days': must be [low, high] with low <= high and high "
            "before synthetic.followup_days starts, got [50, 70]",
        ),
        (
            {
                "registration": {
                    "affine": {"shrink": [2, 1], "smoothing_mm": [1.0], "iterations": 5}
                }
            },
            "'registration.affine': shrink and smoothing_mm need one value per pyramid level",
        ),
    ],
)
def test_bad_config_is_rejected_with_the_key(tmp_path, data, needle):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    assert needle in str(info.value)


def test_unreadable_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path)


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_schema_uses_only_json_schema_keywords():
    """Every property is described by a string and carries only JSON-Schema keywords (an
    unquoted comma in a YAML flow mapping would cut a description and add a stray key)."""
    from importlib.resources import files

    keywords = {
        "type", "description", "default", "properties", "additionalProperties", "items",
        "minItems", "maxItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "enum", "$ref", "pattern", "required", "oneOf", "anyOf", "allOf", "const", "minLength",
        "uniqueItems", "propertyNames", "patternProperties", "examples", "not", "if", "then",
        "else", "format", "maxLength", "minProperties", "contains", "prefixItems",
    }  # fmt: skip
    schema = yaml.safe_load(
        files("deltarad").joinpath("schemas/config.schema.yaml").read_text(encoding="utf-8")
    )
    problems = []

    def walk(node: dict, path: str) -> None:
        for name, prop in node.items():
            where = f"{path}.{name}"
            if not isinstance(prop, dict):
                problems.append(f"{where}: not a mapping")
                continue
            if not isinstance(prop.get("description", ""), str):
                problems.append(f"{where}: description is not text")
            stray = set(prop) - keywords
            if stray:
                problems.append(f"{where}: {sorted(stray)}")
            walk(prop.get("properties", {}), where)
            if isinstance(prop.get("items"), dict):
                walk(prop["items"].get("properties", {}), f"{where}[]")

    walk(schema.get("properties", {}), "config")
    walk(schema.get("definitions", {}), "definitions")
    assert not problems
