"""The broker's ports are an allowlist: cluster hosts in, everyone else out."""
import json
import os
import re
import socket
import subprocess
import tempfile

import pytest
from clusterlib import (CA, address, group, host, http_get, inventory_groups, inventory_vars, password, recap_changed,
                        remote_log, run_playbook, tcp_open, variant, wait_until)

BROKER = group("rabbitmq")[0]
BROKER_NAME = "broker.celery-cluster.internal"   # cluster_broker_tls_name: every broker certificate carries it
BROKER_PORTS = [5671, 5672, 15671, 15672, 15692, 4369, 25672]


@pytest.mark.parametrize("port", BROKER_PORTS)
def test_outsider_cannot_reach_any_broker_port(port):
    is_open, detail = tcp_open("outsider", BROKER, port)
    assert not is_open, f"outsider reached {BROKER}:{port} ({detail})"


def test_celery_hosts_reach_amqps():
    # The positive control for the test above: the same probe does connect.
    for source in group("celery"):
        is_open, detail = tcp_open(source, BROKER, 5671)
        assert is_open, f"{source} could not reach {BROKER}:5671 ({detail})"


def test_plain_amqp_listens_on_loopback_only():
    listening = host(BROKER).socket("tcp://127.0.0.1:5672")
    assert listening.is_listening
    assert not host(BROKER).socket("tcp://0.0.0.0:5672").is_listening
    is_open, detail = tcp_open(group("celery_clients")[0], BROKER, 5672)
    assert not is_open, detail


@pytest.mark.parametrize("port", [15671, 15692])
def test_monitoring_host_reaches_management_and_metrics(port):
    is_open, detail = tcp_open(group("flower")[0], BROKER, port)
    assert is_open, detail


@pytest.mark.parametrize("port", [15671, 15672, 15692])
def test_clients_cannot_reach_management_or_metrics(port):
    is_open, detail = tcp_open(group("celery_clients")[0], BROKER, port)
    assert not is_open, detail


@pytest.mark.parametrize("port", [4369, 25672])
def test_inter_node_ports_are_closed_to_non_brokers(port):
    is_open, detail = tcp_open(group("celery_workers")[0], BROKER, port)
    assert not is_open, detail


def test_admin_address_reaches_management_over_https_only():
    """The controller (the scenario's admin CIDR) reads the management API
    over HTTPS, the broker's certificate verified against the cluster CA and
    the cluster's broker name; the plain port, even for an admin address,
    is not there: it listens on the broker's loopback only."""
    address = host(BROKER).interface("eth0").addresses[0]
    with tempfile.NamedTemporaryFile("w", suffix=".crt") as ca:
        ca.write(host(BROKER).file(CA).content_string)
        ca.flush()
        status, body = http_get(f"https://{address}:15671/api/whoami", auth=("admin", password("admin")),
                                cafile=ca.name, server_name=BROKER_NAME)
    assert status == 200 and json.loads(body)["name"] == "admin", body
    assert host(BROKER).socket("tcp://127.0.0.1:15672").is_listening
    assert not host(BROKER).socket("tcp://0.0.0.0:15672").is_listening
    with pytest.raises(OSError):
        socket.create_connection((address, 15672), timeout=5).close()


def test_input_policy_is_drop_on_every_managed_host():
    for name in group("rabbitmq") + group("logserver") + group("celery"):
        ruleset = host(name).check_output("nft list table inet celery_filter")
        assert "policy drop" in ruleset, name


def test_docker_dns_still_resolves_behind_the_firewall():
    assert host(BROKER).run("getent hosts %s", group("celery_clients")[0]).rc == 0


# The firewall role's watch: every managed host compares its live table with
# the one nftables.service loaded last, alerts on the log server and restores.
WATCH = "/usr/local/sbin/celery-firewall-watch"
WATCH_PROGRAM = "celery-firewall-watch"
MANAGED = group("rabbitmq") + group("logserver") + group("celery")


def watch_status(name):
    return json.loads(host(name).check_output(f"{WATCH} status"))


def alerts(name):
    """The watch's alert lines of host `name`, as the log server filed them."""
    return [line for line in remote_log(name, WATCH_PROGRAM).splitlines() if "ALERT" in line]


def test_every_managed_host_watches_its_firewall_table():
    for name in MANAGED:
        status = watch_status(name)
        assert (status["status"], status["timer"], status["restore"]) == ("ok", "active", True), (name, status)


def test_a_deleted_flushed_or_edited_table_is_alerted_on_the_log_server_and_restored():
    """The table deleted on a broker and on the log server, the whole
    ruleset flushed on a client, one rule of Flower's widened to every
    source: each opens a port to the outsider until the watch notices. Each
    is alerted on the log server within two minutes (with what was wrong),
    and restored: the outsider is refused again, and the host's table is
    the one it loaded."""
    logs, client, flower = group("logserver")[0], group("celery_clients")[0], group("flower")[0]
    before = {name: len(alerts(name)) for name in (BROKER, logs, client, flower)}
    rules = host(flower).check_output("nft -a list chain inet celery_filter input")
    handle = re.search(r'dport 5555 accept comment "[^"]*" # handle (\d+)', rules).group(1)
    assert not tcp_open("outsider", BROKER, 5671)[0] and not tcp_open("outsider", flower, 5555)[0]
    host(BROKER).check_output("nft delete table inet celery_filter")
    host(logs).check_output("nft delete table inet celery_filter")
    host(client).check_output("nft flush ruleset")
    host(flower).check_output("nft replace rule inet celery_filter input handle %s tcp dport 5555 accept", handle)
    try:
        # The deletion did open the door (else the rest proves nothing),
        # unless the watch, every 30 s, has already closed it again.
        assert tcp_open("outsider", BROKER, 5671)[0] or alerts(BROKER)[before[BROKER]:]
        expected = {BROKER: "is missing", logs: "is missing", client: "the whole ruleset is empty",
                    flower: "tcp dport 5555 accept"}

        def all_alerted():
            return all(len(alerts(name)) > before[name] and needle in alerts(name)[-1]
                       for name, needle in expected.items())
        assert wait_until(all_alerted, 120), {name: alerts(name)[-1:] for name in expected}
        assert wait_until(lambda: all(watch_status(name)["status"] == "ok" for name in expected), 60)
    finally:
        # The flush took Docker's own table (its embedded DNS, rules nft
        # cannot load back): only Docker puts it back, when the container
        # starts. The client boots again; its firewall table is loaded at
        # boot through the watch.
        subprocess.run(["docker", "restart", "--time", "10", inventory_vars(client).get("ansible_host", client)],
                       check=True, timeout=120)
        host(client).run("systemctl is-system-running --wait")
    assert host(client).run("getent hosts %s", BROKER).rc == 0, "the client's Docker DNS did not come back"
    assert wait_until(lambda: watch_status(client)["status"] == "ok", 60), watch_status(client)
    for target, port in ((BROKER, 5671), (flower, 5555)):
        is_open, detail = tcp_open("outsider", target, port)
        assert not is_open, f"outsider still reaches {target}:{port} after the restore ({detail})"
    for name in (BROKER, logs, flower):
        assert "restored firewall table" in remote_log(name, WATCH_PROGRAM).split("ALERT")[-1], name


def test_with_restore_off_the_alert_repeats_until_the_firewall_playbook_repairs_the_table():
    restore_off = run_playbook("playbooks/firewall.yml", "--limit", BROKER,
                               '--extra-vars={"firewall_watch_restore": false}')
    assert restore_off.returncode == 0, restore_off.stdout[-3000:]
    before = len(alerts(BROKER))
    host(BROKER).check_output("nft delete table inet celery_filter")
    try:
        repeated = wait_until(lambda: len([line for line in alerts(BROKER)[before:] if "restore is off" in line]) >= 2, 150)
        assert repeated, alerts(BROKER)[before:]
        # Not restored: still missing, and the outsider gets in.
        assert watch_status(BROKER)["status"] == "missing"
        assert tcp_open("outsider", BROKER, 5671)[0]
    finally:
        repaired = run_playbook("playbooks/firewall.yml", "--limit", BROKER)
    # The playbook (restore on again) found the drift before it wrote the
    # watch's settings, and loaded the table itself.
    assert recap_changed(repaired, BROKER) > 0
    load = "firewall : Load the new table now, and keep nftables and the firewall watch enabled and started"
    assert repaired.outcome(load, BROKER) == "changed", repaired.stdout[-3000:]
    assert watch_status(BROKER) | {"last_check": None} == {
        "status": "ok", "detail": "", "restore": True, "timer": "active", "last_check": None}
    is_open, detail = tcp_open("outsider", BROKER, 5671)
    assert not is_open, detail


def test_watch_switched_off_leaves_no_trace_and_comes_back_when_switched_on():
    """firewall_watch_enabled false on one client: the timer stopped and
    every file of the watch gone (program, settings, units, the
    nftables.service drop-in), so a reload of nftables is Debian's own again
    and keeps the table; the default inventory puts the watch back."""
    client = group("celery_clients")[0]
    files = [WATCH, "/etc/celery-firewall-watch.json", "/etc/systemd/system/celery-firewall-watch.service",
             "/etc/systemd/system/celery-firewall-watch.timer",
             "/etc/systemd/system/nftables.service.d/celery-firewall-watch.conf"]
    try:
        off = run_playbook("playbooks/firewall.yml", "--limit", client, '--extra-vars={"firewall_watch_enabled": false}')
        assert off.returncode == 0, off.stdout[-3000:]
        assert recap_changed(off, client) > 0
        assert [path for path in files if host(client).file(path).exists] == []
        assert host(client).run("systemctl is-active celery-firewall-watch.timer").stdout.strip() != "active"
        assert "celery-firewall-watch" not in host(client).check_output("systemctl cat nftables.service")
        host(client).check_output("systemctl reload nftables.service")
        assert "policy drop" in host(client).check_output("nft list table inet celery_filter")
        again = run_playbook("playbooks/firewall.yml", "--limit", client, '--extra-vars={"firewall_watch_enabled": false}')
        assert again.returncode == 0 and recap_changed(again, client) == 0, again.stdout[-3000:]
    finally:
        on = run_playbook("playbooks/firewall.yml", "--limit", client)
    assert on.returncode == 0, on.stdout[-3000:]
    assert all(host(client).file(path).exists for path in files)
    assert wait_until(lambda: watch_status(client)["status"] == "ok", 60), watch_status(client)
    assert watch_status(client)["timer"] == "active"


def _without_host(name):
    """The inventory with host `name` gone from every group (decommissioned)."""
    def edit(data):
        for group_data in inventory_groups(data).values():
            if isinstance(group_data.get("hosts"), dict):
                group_data["hosts"].pop(name, None)
    return edit


def test_a_worker_removed_from_the_inventory_can_no_longer_reach_the_broker():
    """A worker host decommissioned by taking it out of the inventory: the
    next broker.yml drops its address from the broker's allowlist, so the
    host (and whoever owns it now) no longer reaches AMQPS; put back, it
    does again."""
    worker = group("celery_workers")[-1]
    assert tcp_open(worker, BROKER, 5671)[0]
    inventory = variant("no-" + worker, _without_host(worker))
    try:
        removed = run_playbook("playbooks/broker.yml", inventory=inventory)
        assert removed.returncode == 0, removed.stdout[-3000:]
        allowlist = host(BROKER).check_output("cat /etc/nftables.d/rabbitmq.nft")
        assert not re.search(rf"(?<![0-9.]){re.escape(address(worker))}(?![0-9])", allowlist), allowlist
        is_open, detail = tcp_open(worker, BROKER, 5671)
        assert not is_open, f"{worker}, out of the inventory, still reaches {BROKER}:5671 ({detail})"
    finally:
        # Out of the inventory's directory before the run that restores:
        # the lab's inventory is a directory, and every file in it is read.
        os.remove(inventory)
        restored = run_playbook("playbooks/broker.yml")
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert tcp_open(worker, BROKER, 5671)[0]


@pytest.mark.parametrize("overrides, words", [
    ({"rabbitmq_firewall_rules": [{"name": "amqp", "ports": [70000], "from_groups": ["celery"]}]},
     "firewall service 'rabbitmq': rule 'amqp' has port '70000'"),
    ({"firewall_admin_cidrs": ["10.0.0.1/8"]}, "firewall_admin_cidrs: '10.0.0.1/8' is not a valid"),
], ids=["port-out-of-range", "admin-cidr-with-host-bits"])
def test_firewall_playbook_alone_still_refuses_bad_input_before_any_change(overrides, words):
    # Without the preflight play, the firewall role's own checks (which skip
    # what already passed in the same run) are all that stands in the way.
    result = run_playbook("playbooks/firewall.yml", "-e", json.dumps(overrides))
    assert result.returncode != 0
    assert words in " ".join(result.stdout.split()), result.stdout[-3000:]
    assert not any(result.stats.get("changed", {}).values()), result.stdout[-3000:]
