"""RabbitMQ: TLS with the cluster CA, one user per kind of client, no guest,
least privilege, quorum queues by default, and a queue runbook that reports."""
import json
import re
import time
import uuid

from clusterlib import amqp_session, group, host, password, recap_changed, run_playbook

BROKER = group("rabbitmq")[0]
CLIENT = group("celery_clients")[0]
WORKER = group("celery_workers")[0]
EXCHANGE = "celery.tasks"


def test_client_publishes_and_worker_consumes_over_tls_with_their_own_users():
    # A queue of the test's own (a reply-queue name, which clients may declare
    # and bind) so that no Celery pool consumes the raw messages; declared
    # without a type, it must come out a quorum queue.
    queue, marker = str(uuid.uuid4()), uuid.uuid4().hex
    published = amqp_session(CLIENT, "celery_client", [
        ["exchange", EXCHANGE], ["declare", queue], ["bind", queue, EXCHANGE, queue],
        ["publish", queue, 5, marker, EXCHANGE]], BROKER)
    assert published["ok"], published
    try:
        types = dict(line.split("\t") for line in host(BROKER).check_output(
            "rabbitmqctl --quiet list_queues -p celery name type --no-table-headers").splitlines())
        assert types[queue] == "quorum", types
        consumed = amqp_session(WORKER, "celery_worker", [["get", queue, 100]], BROKER)
        assert consumed["ok"], consumed
        assert consumed["result"][0] == [f"{marker}-{i}" for i in range(5)]
    finally:
        amqp_session(WORKER, "celery_worker", [["delete", queue]], BROKER)


def test_guest_cannot_log_in():
    assert "guest" not in host(BROKER).check_output("rabbitmqctl --quiet list_users")
    attempt = amqp_session(CLIENT, "guest", [], BROKER, secret="guest")
    assert not attempt["ok"], attempt
    assert "access_refused" in attempt["error"].lower().replace(" ", "_"), attempt


def test_a_password_changed_behind_the_bundle_is_set_back_and_the_next_run_changes_nothing():
    # The users are managed over the management API (rabbitmq_api_user); the
    # collection's API mode fails on any password change (community.rabbitmq
    # #217), so a password the broker refuses is set over rabbitmqctl first.
    # A rotation in vault takes the same path as this drift.
    wanted = password("celery_client")
    host(BROKER).check_output("rabbitmqctl --quiet change_password celery_client %s", "drifted-" + uuid.uuid4().hex)
    try:
        assert host(BROKER).run("rabbitmqctl --quiet authenticate_user celery_client %s", wanted).rc != 0
        assert recap_changed(run_playbook("playbooks/broker.yml"), BROKER) >= 1
        assert host(BROKER).run("rabbitmqctl --quiet authenticate_user celery_client %s", wanted).rc == 0
        assert recap_changed(run_playbook("playbooks/broker.yml"), BROKER) == 0
    finally:
        host(BROKER).run("rabbitmqctl --quiet change_password celery_client %s", wanted)


def test_client_cannot_publish_into_an_arbitrary_queue_through_the_default_exchange():
    denied = amqp_session(CLIENT, "celery_client", [["publish", "feeds", 1, "x"]], BROKER)
    assert not denied["ok"] and "amq.default" in denied["error"], denied


def test_client_cannot_consume_a_task_queue():
    denied = amqp_session(CLIENT, "celery_client", [["get", "feeds", 1]], BROKER)
    assert not denied["ok"]
    assert "access_refused" in denied["error"].lower().replace(" ", "_"), denied


def test_worker_cannot_open_another_vhost():
    denied = amqp_session(WORKER, "celery_worker", [], BROKER, vhost="/")
    assert not denied["ok"]
    assert re.search(r"not.?allowed|access.?refused", denied["error"], re.I), denied


def test_monitoring_user_cannot_read_task_queues():
    denied = amqp_session(group("flower")[0], "celery_monitor", [["get", "web", 1]], BROKER)
    assert not denied["ok"] and "access" in denied["error"].lower(), denied


def test_erlang_cookie_is_readable_by_rabbitmq_only():
    cookie = host(BROKER).file("/var/lib/rabbitmq/.erlang.cookie")
    assert cookie.user == "rabbitmq" and cookie.mode == 0o400


def test_broker_key_is_private_to_rabbitmq():
    key = host(BROKER).file("/etc/celery-cluster/pki/amqp.key")
    assert key.user == "rabbitmq" and key.mode == 0o600


def test_production_checklist_values_are_live():
    status = json.loads(host(BROKER).check_output("rabbitmq-diagnostics --quiet status --formatter json"))
    assert status["disk_free_limit"] == 2_000_000_000, status["disk_free_limit"]
    pid = host(BROKER).check_output("systemctl show --property MainPID --value rabbitmq-server")
    limits = host(BROKER).file(f"/proc/{pid}/limits").content_string
    assert re.search(r"Max open files\s+20000", limits), limits  # the scenario's rabbitmq_nofile_limit


def test_queue_runbook_prints_names_and_counts():
    queue = f"runbook-{uuid.uuid4().hex[:8]}"
    assert amqp_session(WORKER, "celery_worker", [["declare", queue], ["publish", queue, 3, "r"]], BROKER)["ok"]
    try:
        # RabbitMQ refreshes queue statistics every 5 s: allow a few rounds.
        for _ in range(6):
            result = run_playbook("playbooks/runbooks/queues.yml")
            assert result.returncode == 0, result.stdout + result.stderr
            row = next(line for line in result.stdout.splitlines() if queue in line)
            if row.split()[-5:] == ["quorum", "running", "3", "3", "0"]:
                break
            time.sleep(3)
        assert row.split()[-5:] == ["quorum", "running", "3", "3", "0"], row
    finally:
        amqp_session(WORKER, "celery_worker", [["delete", queue]], BROKER)


# RabbitMQ 4 deprecations the cluster is known to use, and why:
# - transient_nonexcl_queues: Celery's rpc:// reply queues. Celery declares a
#   reply queue on the publishing connection and consumes it on another, so it
#   cannot be exclusive (tried: RESOURCE_LOCKED). Control and event queues are
#   exclusive (control_queue_exclusive, event_queue_exclusive).
# - management_metrics_collection: the management plugin's own statistics,
#   which the management UI and Flower's broker view read.
KNOWN_DEPRECATIONS = {"transient_nonexcl_queues", "management_metrics_collection"}


def test_broker_log_shows_no_other_deprecated_feature_in_use():
    log = host(BROKER).run("cat /var/log/rabbitmq/rabbit@*.log").stdout
    used = set(re.findall(r"Deprecated features: `(\w+)`", log))
    assert used <= KNOWN_DEPRECATIONS, used - KNOWN_DEPRECATIONS
