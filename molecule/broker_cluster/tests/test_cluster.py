"""Three brokers form one RabbitMQ cluster; quorum queues ride out a node."""
import functools
import json
import os
import tempfile
import time
import uuid

import pytest
import yaml
from clusterlib import (INVENTORY, address, amqp_session, broker_pid, group, host, http_get, inventory_vars, password,
                        recap_changed, run_playbook, tcp_open, wait_until)

BROKERS = group("rabbitmq")
PRODUCER = group("celery_beat")[0]
WORKER = group("celery_workers")[0]
EXCHANGE = "celery.tasks"
TASK_QUEUES = inventory_vars(BROKERS[0])["cluster_task_queues"]  # celery, feeds, web, media


@functools.cache
def ca_file():
    """The cluster CA certificate, from a broker, in a file on the controller."""
    with tempfile.NamedTemporaryFile("w", suffix=".crt", delete=False) as handle:
        handle.write(host(BROKERS[0]).file("/etc/celery-cluster/pki/ca.crt").content_string)
    return handle.name


def _task_topology(name):
    """{queue: type} of the task queues, and the (queue, routing key) bindings
    of the task exchange, from the management API as the controller (an admin
    address) sees it. (`rabbitmqctl list_queues` can hang for a minute on
    queues led by a node restarted in an earlier test: roles/rabbitmq/README.md.)"""
    api, auth = f"https://{address(name)}:15671/api", ("admin", password("admin"))
    tls = {"cafile": ca_file(), "server_name": "broker.celery-cluster.internal"}   # cluster_broker_tls_name
    status, queues = http_get(f"{api}/queues/celery?columns=name,type", auth=auth, **tls)
    assert status == 200, queues
    status, bindings = http_get(f"{api}/exchanges/celery/{EXCHANGE}/bindings/source", auth=auth, **tls)
    assert status == 200, bindings
    return ({q["name"]: q["type"] for q in json.loads(queues) if q["name"] in TASK_QUEUES},
            {(b["destination"], b["routing_key"]) for b in json.loads(bindings) if b["destination_type"] == "queue"})


def _running(name):
    out = host(name).run("rabbitmqctl --quiet cluster_status --formatter json")
    return set(json.loads(out.stdout)["running_nodes"]) if out.rc == 0 else set()


def test_three_brokers_form_one_cluster():
    expected = {f"rabbit@{b}" for b in BROKERS}
    assert len(expected) == 3
    for broker in BROKERS:
        assert _running(broker) == expected, broker


def test_partition_handling_is_pause_minority():
    out = host(BROKERS[0]).check_output(
        "rabbitmqctl --quiet eval 'application:get_env(rabbit, cluster_partition_handling).'")
    assert out.strip() == "{ok,pause_minority}"


@pytest.mark.parametrize("port", [4369, 25672])
def test_inter_node_ports_are_open_between_brokers_only(port):
    assert tcp_open(BROKERS[1], BROKERS[0], port)[0]
    assert not tcp_open(WORKER, BROKERS[0], port)[0]
    assert not tcp_open(PRODUCER, BROKERS[0], port)[0]


def _dist_handshake(source, target, *certificate):
    """A TLS 1.2 handshake from broker `source` to the distribution port of
    broker `target`, checking target's certificate against the cluster CA and
    its node's host name (in TLS 1.2 a server that requires a client
    certificate refuses within the handshake). Returns (rc, openssl's report)."""
    pki = "/etc/celery-cluster/pki"
    client = ["-cert", f"{pki}/{certificate[0]}.crt", "-key", f"{pki}/{certificate[0]}.key"] if certificate else []
    out = host(source).run(
        "openssl s_client -brief -tls1_2 -connect %s:25672 -CAfile %s -verify_return_error -verify_hostname %s "
        + " ".join(["%s"] * len(client)) + " </dev/null", target, f"{pki}/ca.crt", target, *client)
    return out.rc, out.stdout + out.stderr


def test_erlang_distribution_is_tls_from_the_cluster_ca():
    # Quorum replication carries task bodies between brokers, and the CLI tools
    # are distribution peers too (every rabbitmqctl of these tests went over it).
    rc, report = _dist_handshake(BROKERS[1], BROKERS[0], "amqp")
    assert rc == 0 and "Verification: OK" in report, report
    # A peer without a certificate of the cluster CA is refused in the handshake.
    rc, report = _dist_handshake(BROKERS[1], BROKERS[0])
    assert rc != 0 and "CONNECTION ESTABLISHED" not in report, report


def test_quorum_queue_accepts_and_delivers_with_one_broker_stopped():
    # The producer may only publish: the broker play declared media and its binding.
    queue, marker = "media", uuid.uuid4().hex
    before = amqp_session(PRODUCER, "celery_producer", [["publish", queue, 50, marker + "-a", EXCHANGE]], BROKERS[0])
    assert before["ok"], before
    members = host(BROKERS[0]).check_output("rabbitmq-queues --quiet quorum_status %s --vhost celery", queue)
    assert all(f"rabbit@{b}" in members for b in BROKERS), members

    stopped = BROKERS[2]
    host(stopped).check_output("systemctl stop rabbitmq-server")
    try:
        during = amqp_session(PRODUCER, "celery_producer", [["publish", queue, 50, marker + "-b", EXCHANGE]], BROKERS[1])
        assert during["ok"], during
        consumed = amqp_session(WORKER, "celery_worker", [["get", queue, 500]], BROKERS[0])
        assert consumed["ok"], consumed
        mine = [body for body in consumed["result"][0] if body.startswith(marker)]
        expected = [f"{marker}-a-{i}" for i in range(50)] + [f"{marker}-b-{i}" for i in range(50)]
        assert mine == expected
    finally:
        host(stopped).check_output("systemctl start rabbitmq-server")
        wait_until(lambda: _running(BROKERS[0]) == {f"rabbit@{b}" for b in BROKERS}, 120, interval=3)
    assert _running(BROKERS[0]) == {f"rabbit@{b}" for b in BROKERS}


def test_every_task_queue_is_declared_by_the_broker_play_as_a_quorum_queue():
    # No pool of this scenario consumes `media`: only the broker play declared it.
    queues, bindings = _task_topology(BROKERS[0])
    assert queues == {name: "quorum" for name in TASK_QUEUES}
    assert {(name, name) for name in TASK_QUEUES} <= bindings, bindings


def test_no_pool_failed_to_bind_a_task_queue_for_delayed_delivery():
    # Every pool binds every task queue at start; before the broker play
    # declared them, the pools logged this for `media` at every start.
    journal = host(WORKER).check_output("journalctl --no-pager -u 'celery-worker@*'")
    assert " ready." in journal  # the pools' log it is
    assert "Failed to bind queue" not in journal
    assert "Failed to setup delayed delivery" not in journal


def test_a_task_queue_deleted_behind_the_bundle_is_declared_again():
    host(BROKERS[0]).run("rabbitmqctl --quiet delete_queue --vhost celery media")
    assert "media" not in _task_topology(BROKERS[0])[0]
    result = run_playbook("playbooks/broker.yml")
    assert recap_changed(result, BROKERS[0]) >= 1
    queues, bindings = _task_topology(BROKERS[0])
    assert queues.get("media") == "quorum" and ("media", "media") in bindings, (queues, bindings)


def _runbook_rows(result):
    """{queue: [type, state, messages, ready, consumers]} from the queues runbook's table."""
    rows = {}
    for line in result.stdout.splitlines():
        cells = line.strip().lstrip("- ").split()
        if len(cells) == 6 and cells[0] != "name":
            rows[cells[0]] = cells[1:]
    return rows


def test_queue_runbooks_answer_on_a_cluster_after_a_broker_restart():
    """Runs after the broker-stop test above restarted a broker: the runbooks
    read over the management API, where `rabbitmqctl list_queues` can wait a
    minute and fail on such a cluster (roles/rabbitmq/README.md)."""
    queue = f"runbook-{uuid.uuid4().hex[:8]}"
    assert amqp_session(WORKER, "celery_worker", [["declare", queue], ["publish", queue, 3, "r"]], BROKERS[1])["ok"]
    try:
        for _ in range(6):   # queue statistics refresh every 5 s
            listed = run_playbook("playbooks/runbooks/queues.yml")
            assert listed.returncode == 0, listed.stdout[-3000:]
            rows = _runbook_rows(listed)
            if rows.get(queue) == ["quorum", "running", "3", "3", "0"]:
                break
            time.sleep(3)
        assert rows.get(queue) == ["quorum", "running", "3", "3", "0"], listed.stdout[-3000:]
        for name in TASK_QUEUES:
            assert rows.get(name, [])[:2] == ["quorum", "running"], (name, listed.stdout[-3000:])
        purged = run_playbook("playbooks/runbooks/purge-queue.yml", "-e", f"runbook_queue={queue}",
                              "-e", f"runbook_confirm={queue}")
        assert f"Purged {queue} in vhost celery: 3 ready messages deleted" in purged.stdout, purged.stdout[-3000:]
        left = amqp_session(WORKER, "celery_worker", [["get", queue, 10]], BROKERS[1])
        assert left["ok"] and left["result"] == [[]], left
    finally:
        amqp_session(WORKER, "celery_worker", [["delete", queue]], BROKERS[1])


def _inventory_with_addresses():
    """The scenario's inventory with firewall_address set on every host, in a
    file beside it (its group_vars apply); removed after the run."""
    with open(INVENTORY, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    hosts = data["all"]["hosts"]
    for name in list(hosts):
        hosts[name] = dict(hosts[name] or {}, firewall_address=address(name))
    path = os.path.join(os.path.dirname(INVENTORY), "variant-addresses.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


def _broker_pids():
    return {b: broker_pid(b) for b in BROKERS}


def test_switching_tls_between_brokers_restarts_them_together_and_keeps_the_messages():
    """A running cluster cannot switch its distribution node by node (a TLS
    node and a plain one cannot talk): the role stops every broker, then
    starts them together. Under --limit it refuses before any change."""
    plain = '{"rabbitmq_dist_tls": false}'
    pids = _broker_pids()
    # Every host's address in the inventory, so that the firewall can render
    # the rules of a run limited to one broker (it renders them unchanged).
    variant = _inventory_with_addresses()
    try:
        limited = run_playbook("playbooks/broker.yml", "-e", plain, "--limit", BROKERS[0], inventory=variant)
    finally:
        os.remove(variant)
    assert limited.returncode != 0 and "Run it without --limit" in limited.stdout, limited.stdout[-3000:]
    assert _broker_pids() == pids
    assert "inet_tls" in host(BROKERS[0]).file("/etc/rabbitmq/rabbitmq-env.conf").content_string

    queue, marker = f"switch-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    assert amqp_session(WORKER, "celery_worker", [["declare", queue], ["publish", queue, 20, marker]], BROKERS[1])["ok"]
    try:
        switched = run_playbook("playbooks/broker.yml", "-e", plain)
        assert switched.returncode == 0, switched.stdout[-3000:]
        assert all(_running(b) == {f"rabbit@{x}" for x in BROKERS} for b in BROKERS)
        assert all(now != pids[b] for b, now in _broker_pids().items())
        # Plain distribution now: no TLS handshake on 25672.
        rc, report = _dist_handshake(BROKERS[1], BROKERS[0], "amqp")
        assert rc != 0 and "Verification: OK" not in report, report
    finally:
        back = run_playbook("playbooks/broker.yml")
    assert back.returncode == 0, back.stdout[-3000:]
    assert all(_running(b) == {f"rabbit@{x}" for x in BROKERS} for b in BROKERS)
    rc, report = _dist_handshake(BROKERS[1], BROKERS[0], "amqp")
    assert rc == 0 and "Verification: OK" in report, report
    # Both switches stopped every broker: the durable queue kept its messages.
    got = amqp_session(WORKER, "celery_worker", [["get", queue, 50], ["delete", queue]], BROKERS[2])
    assert got["ok"] and got["result"][0] == [f"{marker}-{i}" for i in range(20)], got
