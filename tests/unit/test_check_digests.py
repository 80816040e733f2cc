"""A role that skips checks already passed in this run keys the skip on a
digest of every value those checks read. A value a check reads but the digest
leaves out would let a changed value skip its check: these tests read the
check files and the digests and fail on any such value."""
import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIREWALL = ROOT / "roles" / "firewall"
# A public input of the firewall role, not a private (__) name.
INPUT = re.compile(r"(?<![\w])firewall_[a-z_]+")


def _vars():
    return yaml.safe_load((FIREWALL / "vars" / "main.yml").read_text(encoding="utf-8"))


def _inputs(*files):
    return {name for path in files for name in INPUT.findall((FIREWALL / "tasks" / path).read_text(encoding="utf-8"))}


def test_the_lockout_digest_covers_every_input_the_lockout_checks_read():
    digest = _vars()["__firewall_lockout_digest"]
    read = _inputs("lockout_checks.yml", "assert.yml")
    assert read, "no input found: the check files moved?"
    assert {name for name in read if name not in INPUT.findall(digest)} == set()
    assert "ansible_connection" in digest


def test_the_validate_digest_covers_the_rules_and_every_address_they_resolve_to():
    variables = _vars()
    digest = variables["__firewall_validate_digest"]
    read = _inputs("validate_checks.yml")
    assert {"firewall_service_name", "firewall_service_rules"} <= read
    assert {name for name in read if name not in INPUT.findall(digest)} == set()
    # The host addresses the checks test come from these host variables and facts.
    addresses = variables["__firewall_host_addresses"]
    for key in re.findall(r"hostvars\[host\]\['(\w+)'\]", addresses) + re.findall(r"facts\['(\w+)'\]", addresses):
        if key != "ansible_facts":
            assert key in digest, key
