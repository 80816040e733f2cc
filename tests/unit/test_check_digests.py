"""A role that skips checks already passed in this run keys the skip on a
digest of every value those checks read (the firewall role's lockout
checks). A value a check reads but the digest leaves out would let a changed
value skip its check: this test reads the check files and the digest and
fails on any such value."""
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
