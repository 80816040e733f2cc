"""Central logging across the whole cluster (site.yml deploys it): every
managed host's log reaches the log server, one file per host and program.
Outages, ordering and certificate checks are the `logging` scenario's."""
import uuid

import pytest
from clusterlib import REMOTE_LOG_DIR, amqp_session, group, host, inventory_vars, wait_for_remote_log

MANAGED = sorted(set(group("rabbitmq") + group("logserver") + group("celery")))


@pytest.mark.parametrize("source", MANAGED)
def test_every_managed_host_forwards_its_log(source):
    tag = f"central-{uuid.uuid4().hex[:8]}"
    host(source).check_output("logger -t %s %s", tag, f"hello from {source}")
    text = wait_for_remote_log(source, tag, f"hello from {source}")
    assert f"hello from {source}" in text, f"{source}'s line did not reach {group('logserver')[0]}"


def test_broker_lines_arrive_in_rabbitmq_log():
    broker = group("rabbitmq")[0]
    worker = group("celery_workers")[0]
    # An AMQP session makes RabbitMQ log the connection and its user.
    result = amqp_session(worker, "celery_worker", [], broker)
    assert result["ok"], result
    assert "celery_worker" in wait_for_remote_log(broker, "rabbitmq", "celery_worker")


def test_every_worker_pool_beat_and_flower_have_their_own_file():
    expected = [(worker, f"celery-worker-{pool['name']}")
                for worker in group("celery_workers")
                for pool in inventory_vars(worker).get("celery_worker_pools", [])]
    expected.append((group("celery_beat")[0], "celery-beat"))
    expected += [(name, "flower") for name in group("flower")]
    assert len(expected) >= 5
    # A file of its own (the log server lists these programs), not lines in
    # the catch-all _other.log.
    server = host(group("logserver")[0])
    paths = [f"{REMOTE_LOG_DIR}/{source}/{program}.log" for source, program in expected]
    missing = [path for path in paths if not (server.file(path).exists and server.file(path).size > 0)]
    assert not missing, f"no lines on the log server in {missing}"


def test_received_logs_are_readable_by_root_and_the_log_group_only():
    server = host(group("logserver")[0])
    assert server.file("/var/log/remote").mode == 0o750
    assert server.check_output("find /var/log/remote -perm /0027 -print") == ""
