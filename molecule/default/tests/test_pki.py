"""Private keys stay private: each host's keys are readable by root and the
one service that needs them, and the CA's key never leaves the controller."""
import json
import os

import pytest
from clusterlib import INVENTORY, PKI, group, host, inventory_vars, run_playbook

MANAGED = sorted(set(group("rabbitmq") + group("logserver") + group("celery")))


@pytest.mark.parametrize("name", MANAGED)
def test_no_private_key_is_readable_by_others(name):
    keys = host(name).check_output("find /etc/celery-cluster /etc/rabbitmq /etc/celery /etc/flower -name '*.key' 2>/dev/null || true").split()
    assert f"{PKI}/syslog.key" in keys, keys  # every managed host forwards its log over TLS
    for key in keys:
        mode = host(name).file(key).mode
        assert mode & 0o007 == 0, f"{name}:{key} is {oct(mode)}"
        assert host(name).file(key).user == "root" or host(name).file(key).user == "rabbitmq", key


# Every file on the host that holds a private key, and its public key next to the CA's.
_CA_KEY_SEARCH = r"""
ca=$(openssl x509 -in %s -noout -pubkey)
grep -rlI -e '-----BEGIN .*PRIVATE KEY-----' /etc /root /home /srv /var/lib /opt /usr/local /tmp 2>/dev/null | while read -r f; do
  pub=$(openssl pkey -in "$f" -pubout 2>/dev/null) || continue
  [ "$pub" = "$ca" ] && echo "CA KEY $f" || echo "key $f"
done
"""


@pytest.mark.parametrize("name", MANAGED)
def test_the_ca_private_key_is_on_no_managed_host(name):
    found = host(name).check_output("bash -c %s", _CA_KEY_SEARCH % f"{PKI}/ca.crt")
    assert "key " in found, "the search found no key at all: it would not find the CA's either"
    assert "CA KEY" not in found, found


@pytest.mark.parametrize("name", group("flower"))
def test_the_flower_key_is_for_flower_only(name):
    key = host(name).file(f"{PKI}/flower.key")
    assert key.exists and key.mode == 0o640 and key.user == "root" and key.group == "flower", (key.mode, key.user, key.group)


# A client that is broken into: its /etc/hosts names its own address after
# the name every Celery host checks the broker by, so its fqdn fact says it
# is the broker; and it can hand the controller any request it likes.
CLIENT = group("celery_clients")[0]
BROKER_NAME = inventory_vars(CLIENT)["cluster_broker_tls_name"]
PROBE = os.path.join(os.path.dirname(__file__), "playbooks", "probe-certificate.yml")


def probe(mode, *extra):
    return run_playbook(PROBE, "--extra-vars", f"probe_host={CLIENT} probe_mode={mode}", *extra)


@pytest.fixture(scope="module")
def intruder():
    client = host(CLIENT)
    client.check_output("cp /etc/hosts /tmp/hosts.before-probe")
    # Written in place: Docker bind-mounts /etc/hosts.
    client.check_output("{ echo \"$(hostname -I | cut -d' ' -f1) %s $(hostname)\"; cat /tmp/hosts.before-probe; } > /etc/hosts", BROKER_NAME)
    assert client.check_output("hostname --fqdn").strip() == BROKER_NAME
    yield client
    client.check_output("cat /tmp/hosts.before-probe > /etc/hosts && rm -f /tmp/hosts.before-probe %s/probe.key %s/probe.crt", PKI, PKI)


def test_a_host_gets_a_certificate_for_the_names_the_inventory_gives_it_only(intruder):
    result = probe("issue")
    assert result.returncode == 0, result.stdout[-3000:]
    names = intruder.check_output("openssl x509 -in %s/probe.crt -noout -ext subjectAltName", PKI)
    assert f"DNS:{CLIENT}" in names, names
    assert BROKER_NAME not in names, names


def forged(override):
    if not host(CLIENT).file(f"{PKI}/probe.key").exists:
        assert probe("issue").returncode == 0
    return probe("forged", "--extra-vars", json.dumps({"probe_override": override}))


def test_a_request_made_by_hand_for_what_the_inventory_gives_passes_the_check(intruder):
    # The control for the next test: the check refuses what is asked, not how.
    result = forged({})
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("override", [
    {"subjectAltName": f"DNS:{CLIENT},DNS:{BROKER_NAME}"},
    {"basicConstraints": "critical,CA:TRUE"},
    {"extendedKeyUsage": "serverAuth,clientAuth,codeSigning"},
    {"nameConstraints": "permitted;DNS:.internal"},
], ids=["another-name", "ca", "code-signing", "extra-extension"])
def test_a_request_asking_for_more_is_refused_by_the_controller(intruder, override):
    result = forged(override)
    assert result.returncode != 0, result.stdout[-3000:]
    assert "asks for more than the inventory gives this host" in result.stdout, result.stdout[-3000:]


def test_the_ca_cannot_make_another_ca():
    text = host(CLIENT).check_output("openssl x509 -in %s/ca.crt -noout -ext basicConstraints", PKI)
    assert "CA:TRUE, pathlen:0" in text, text


# A run with nothing to change trusts the controller's record of what it
# issued (pki_ca_dir/issued/) and skips the issue path; these are the
# changes by hand that record must not hide.
def test_a_loosened_key_and_a_deleted_certificate_are_repaired_by_the_next_run():
    name = group("celery_workers")[0]
    target = host(name)
    target.check_output("chmod 0644 %s/syslog.key && rm %s/syslog.crt", PKI, PKI)
    repair = run_playbook("playbooks/services/logging.yml", "--limit", name)
    assert repair.changed(name) > 0
    assert target.file(f"{PKI}/syslog.key").mode == 0o600
    assert target.file(f"{PKI}/syslog.crt").exists
    target.check_output("openssl verify -CAfile %s/ca.crt %s/syslog.crt", PKI, PKI)
    again = run_playbook("playbooks/services/logging.yml", "--limit", name)
    assert again.changed(name) == 0, again.stdout[-3000:]


# The same for the CA on the controller: a run with nothing to change trusts
# the record of the CA it generated (pki_ca_dir/ca.record.json) and skips
# the key, request and self-signing modules. A key loosened by hand must
# still be repaired, and the run after must skip them again.
def test_a_loosened_ca_key_on_the_controller_is_repaired_by_the_next_run():
    key = os.path.join(os.path.dirname(os.path.abspath(INVENTORY)), ".pki", "ca.key")
    task = "pki : Generate the CA private key on the controller"
    os.chmod(key, 0o644)
    try:
        repair = run_playbook("playbooks/pki.yml")
        # Run once, on whichever host the play lists first.
        assert {repair.outcome(task, name) for name in MANAGED} - {None} == {"changed"}
        assert os.stat(key).st_mode & 0o777 == 0o600
        again = run_playbook("playbooks/pki.yml")
        assert sum(again.changed(name) for name in MANAGED) == 0, again.stdout[-3000:]
        assert {again.outcome(task, name) for name in MANAGED} - {None} == {"skipping"}
    finally:
        os.chmod(key, 0o600)


def test_a_passphrase_that_does_not_open_the_ca_key_fails_the_run_before_any_change():
    # With a passphrase the record is not trusted: the key module must still
    # try it, and refuse, although the files match their record.
    refused = run_playbook("playbooks/pki.yml", "--extra-vars", "pki_ca_privatekey_passphrase=not-the-passphrase")
    assert refused.returncode != 0
    assert "Unable to read the key" in refused.stdout, refused.stdout[-3000:]
    assert not refused.stats.get("changed"), refused.stats
