"""The broker's ports are an allowlist: cluster hosts in, everyone else out."""
import json
import socket
import tempfile

import pytest
from clusterlib import CA, group, host, http_get, password, tcp_open

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
