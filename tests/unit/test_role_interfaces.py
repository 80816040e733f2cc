"""Every role's defaults and meta/argument_specs.yml describe the same interface.

STYLE.md: defaults/main.yml is the complete, commented interface; inputs
without a safe default stay commented there; argument_specs matches key for key.
"""
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent for p in (ROOT / "roles").glob("*/defaults/main.yml"))
COMMENTED_INPUT = re.compile(r"^# ?([a-z][a-z0-9_]*):(\s|$)", re.MULTILINE)


def load(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_and_argument_specs_name_the_same_inputs(role):
    defaults_text = (role / "defaults" / "main.yml").read_text(encoding="utf-8")
    defaults = set(load(role / "defaults" / "main.yml"))
    commented = {m[0] for m in COMMENTED_INPUT.findall(defaults_text) if m[0].startswith(role.name)}
    specs = load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert defaults - set(specs) == set(), "in defaults, missing from argument_specs"
    assert set(specs) - defaults - commented == set(), "in argument_specs, neither defaulted nor commented in defaults"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_input_carries_the_role_prefix(role):
    defaults = load(role / "defaults" / "main.yml")
    bad = [k for k in defaults if not k.startswith(role.name + "_")]
    assert bad == []


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_required_inputs_without_default_are_documented(role):
    specs = load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    defaults_text = (role / "defaults" / "main.yml").read_text(encoding="utf-8")
    for name, spec in specs.items():
        if spec.get("required"):
            assert re.search(rf"^# ?{name}:", defaults_text, re.MULTILINE), f"{name} is required but not shown in defaults"


@pytest.mark.parametrize("template", sorted((ROOT / "roles").glob("*/templates/*.j2")), ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_templates_start_with_the_managed_header(template):
    first = template.read_text(encoding="utf-8").splitlines()[0]
    assert "ansible_managed" in first


def test_the_example_application_version_is_the_one_hosts_install():
    """Hosts pin celery-example==<vars version> and a wheel is built once per
    version: new example code needs a new version in both places, or hosts keep the old one."""
    app = ROOT / "roles/celery/files/example_app"
    pyproject = re.search(r'^version = "([^"]+)"', (app / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    pinned = yaml.safe_load((ROOT / "roles/celery/vars/main.yml").read_text())["__celery_example_version"]
    assert pyproject == pinned
