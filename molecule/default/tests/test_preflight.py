"""Bad input is refused in the preflight play, before any host changes."""
import os
import re

import pytest
import yaml
from clusterlib import INVENTORY, group, host, run_playbook


def variant(name, edit):
    """A copy of the scenario's inventory, edited, beside it (so group_vars apply)."""
    with open(INVENTORY, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    edit(data)
    path = os.path.join(os.path.dirname(INVENTORY), f"variant-{name}.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


def fingerprint():
    """What a run would change: configuration files and units on the managed hosts."""
    return {name: host(name).run(
        "sha256sum /etc/nftables.conf /etc/nftables.d/*.nft /etc/celery/*.py /etc/celery/*.env "
        "/etc/rabbitmq/rabbitmq.conf /etc/systemd/system/celery-* 2>/dev/null").stdout
        for name in group("rabbitmq") + group("celery")}


def two_beats(data):
    data["celery_beat"]["hosts"][group("celery_workers")[0]] = {"ansible_connection": "community.docker.docker"}


def no_beat(data):
    data["celery_beat"]["hosts"] = {}


@pytest.mark.parametrize("edit, message", [
    (two_beats, "must hold exactly one host, it holds 2"),
    (no_beat, "must hold exactly one host, it holds 0"),
])
def test_beat_group_size_is_refused_before_any_change(edit, message):
    before = fingerprint()
    inventory = variant(edit.__name__, edit)
    try:
        result = run_playbook("playbooks/site.yml", inventory=inventory)
    finally:
        os.remove(inventory)
    assert result.returncode != 0
    assert message in " ".join(result.stdout.split()), result.stdout[-2000:]
    assert not re.search(r"changed=[1-9]", result.stdout), result.stdout[-2000:]
    assert fingerprint() == before
