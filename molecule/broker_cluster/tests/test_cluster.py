"""Three brokers form one RabbitMQ cluster; quorum queues ride out a node."""
import json
import time
import uuid

import pytest
from clusterlib import amqp_session, group, host, tcp_open

BROKERS = group("rabbitmq")
PRODUCER = group("celery_beat")[0]
WORKER = group("celery_workers")[0]
EXCHANGE = "celery.tasks"


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


def test_quorum_queue_accepts_and_delivers_with_one_broker_stopped():
    queue, marker = "media", uuid.uuid4().hex
    setup = [["exchange", EXCHANGE], ["declare", queue], ["bind", queue, EXCHANGE, queue]]
    before = amqp_session(PRODUCER, "celery_producer", setup + [["publish", queue, 50, marker + "-a", EXCHANGE]], BROKERS[0])
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
        deadline = time.monotonic() + 120
        while _running(BROKERS[0]) != {f"rabbit@{b}" for b in BROKERS} and time.monotonic() < deadline:
            time.sleep(3)
    assert _running(BROKERS[0]) == {f"rabbit@{b}" for b in BROKERS}
