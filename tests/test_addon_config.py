"""The add-on's config.yaml and build.yaml: valid for Home Assistant's schemas, no key at its
default, supported arches only, options that mean what the server's flags mean, and every page
where the Supervisor reads it (beside config.yaml)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import jsonschema
import pytest
import yaml

from wyoming_oww_rk3588 import __version__
from wyoming_oww_rk3588.cli import NPU_CORE_MASKS, build_parser
from wyoming_oww_rk3588.backends.select import FEATURE_BACKENDS, HEAD_BACKENDS

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = Path(__file__).resolve().parent / "fixtures" / "addon_schemas"
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"
DEPRECATED_ARCHES = {"armhf", "armv7", "i386"}
# Option type grammar of the Supervisor's add-on options (str, bool, int(min,max), float(min,max),
# list(a|b), match(...), port, email, url, password, device), optionally ending in "?".
ELEMENT = re.compile(
    r"^(bool|email|url|port|device(\(subsystem=[a-z]+\))?|str(\(\d*,\d*\))?|password(\(\d*,\d*\))?"
    r"|int(\((?P<imin>-?\d+)?,(?P<imax>-?\d+)?\))?|float(\((?P<fmin>-?\d*\.?\d+)?,(?P<fmax>-?\d*\.?\d+)?\))?"
    r"|match\(.+\)|list\((?P<choices>.+)\))\??$"
)
# option -> the server flag whose default and choices it mirrors
FLAG_OF = {
    "threshold": "threshold", "trigger_level": "trigger_level", "refractory_seconds": "refractory_seconds",
    "features_backend": "features_backend", "heads_backend": "heads_backend", "npu_core_mask": "npu_core_mask",
    "vad_threshold": "vad_threshold", "noise_suppression": "noise_suppression",
    "custom_verifier_threshold": "custom_verifier_threshold", "batch_window_ms": "batch_window_ms",
}


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"addon-{name}.schema.json").read_text())


def set_to_default(data: dict, props: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in data.items():
        spec = props.get(key, {})
        if "default" in spec and value == spec["default"]:
            found.append(prefix + key)
        nested = spec.get("properties") or next((s.get("properties") for s in spec.get("anyOf", [])
                                                 if s.get("type") == "object"), None)
        if isinstance(value, dict) and nested:
            found += set_to_default(value, nested, f"{prefix}{key}.")
    return found


@pytest.mark.parametrize("name", ["config", "build"])
def test_file_validates_against_home_assistants_schema(name):
    jsonschema.Draft7Validator(schema(name), format_checker=jsonschema.FormatChecker()).validate(load(f"{name}.yaml"))


@pytest.mark.parametrize("name", ["config", "build"])
def test_no_key_is_set_to_its_schema_default(name):
    assert set_to_default(load(f"{name}.yaml"), schema(name)["properties"]) == []


def test_schema_copies_match_the_shared_ones():
    if not SHARED_SCHEMAS.is_dir():
        pytest.skip(f"{SHARED_SCHEMAS} is not beside this checkout; the copies in {SCHEMAS} are used as they are")
    for path in SHARED_SCHEMAS.glob("*.json"):
        assert json.loads(path.read_text()) == json.loads((SCHEMAS / path.name).read_text()), path.name


def test_arches_are_aarch64_and_amd64_with_a_base_image_each():
    config, build = load("config.yaml"), load("build.yaml")
    assert set(config["arch"]) == {"aarch64", "amd64"} and not DEPRECATED_ARCHES & set(config["arch"])
    assert set(build["build_from"]) == set(config["arch"])
    for arch, image in build["build_from"].items():
        assert image.startswith(f"ghcr.io/home-assistant/{arch}-base"), image


def test_version_is_the_packages():
    assert load("config.yaml")["version"] == __version__


def test_port_devices_discovery_and_share_for_the_board():
    config = load("config.yaml")
    assert "10400/tcp" in config["ports"]
    assert config["discovery"] == ["wyoming"]
    assert {"/dev/mali0", "/dev/rknpu"} <= set(config["devices"])
    assert config["video"] is True  # every DRM node: the panthor GPU and the rknpu NPU, whatever their numbers
    assert config["devicetree"] is True
    assert "share:rw" in config["map"]
    assert config["init"] is False  # s6-overlay is PID 1 in Home Assistant's base images


def test_every_option_has_a_valid_schema_element_and_a_default_that_fits_it():
    config = load("config.yaml")
    assert set(config["options"]) == set(config["schema"])
    for key, element in config["schema"].items():
        value = config["options"][key]
        if isinstance(element, list):  # a list option: [element]
            assert isinstance(value, list) and ELEMENT.match(element[0]), key
            continue
        match = ELEMENT.match(element)
        assert match, f"{key}: {element!r} is not a Supervisor option type"
        if match["choices"]:
            assert str(value) in match["choices"].split("|"), key
        for low, high in ((match["imin"], match["imax"]), (match["fmin"], match["fmax"])):
            if low is not None:
                assert float(low) <= float(value) <= float(high), key


def test_options_mirror_the_servers_defaults_and_choices():
    config = load("config.yaml")
    parser = build_parser()
    defaults = vars(parser.parse_args([]))
    for option, dest in FLAG_OF.items():
        assert config["options"][option] == defaults[dest], option
    choices = {"features_backend": FEATURE_BACKENDS, "heads_backend": HEAD_BACKENDS, "npu_core_mask": NPU_CORE_MASKS}
    for option, expected in choices.items():
        assert ELEMENT.match(config["schema"][option])["choices"].split("|") == list(expected), option


def test_translations_and_docs_cover_every_option_and_the_port():
    config = load("config.yaml")
    translations = yaml.safe_load((REPO / "translations" / "en.yaml").read_text())
    assert set(translations["configuration"]) == set(config["schema"])
    for key, text in translations["configuration"].items():
        assert text["name"] and text["description"], key
    assert set(translations["network"]) == set(config["ports"])
    docs = (REPO / "DOCS.md").read_text()
    for key in config["schema"]:
        assert f"`{key}`" in docs, key


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pages_are_where_the_supervisor_reads_them_beside_config_yaml():
    for name in ("DOCS.md", "CHANGELOG.md", "icon.png", "logo.png", "translations/en.yaml", "README.md"):
        assert (REPO / name).is_file(), name
    for name in ("DOCS.md", "CHANGELOG.md", "icon.png", "logo.png", "translations"):
        assert (REPO / name).resolve().parent == REPO / "addon" or (REPO / name).resolve() == REPO / "addon" / name
    assert png_size(REPO / "icon.png") == (128, 128)
    assert png_size(REPO / "logo.png") == (250, 100)
    assert f"## {__version__}" in (REPO / "CHANGELOG.md").read_text()


def test_the_repository_holds_exactly_one_add_on():
    # The Supervisor takes every config.{json,yaml,yml} outside dot-folders and rootfs as an add-on.
    found = [p.relative_to(REPO) for p in REPO.glob("**/config.*")
             if p.suffix in (".json", ".yaml", ".yml")
             and not any(part.startswith(".") or part == "rootfs" for part in p.relative_to(REPO).parts)]
    assert found == [Path("config.yaml")]
    assert load("repository.yaml")["name"]
