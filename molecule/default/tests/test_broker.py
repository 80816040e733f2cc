"""RabbitMQ: TLS with the cluster CA, one user per kind of client, no guest,
least privilege, quorum queues by default, and a queue runbook that reports."""
import json
import re
import subprocess
import time
import uuid

import pytest
from clusterlib import amqp_session, group, host, inventory_vars, password, recap_changed, run_playbook, wait_until

BROKER = group("rabbitmq")[0]
CLIENT = group("celery_clients")[0]
WORKER = group("celery_workers")[0]
EXCHANGE = "celery.tasks"


def test_client_publishes_and_worker_consumes_over_tls_with_their_own_users():
    # A queue of the test's own, declared and bound by the worker (the
    # client may only publish), so that no Celery pool consumes the raw
    # messages; declared without a type, it must come out a quorum queue.
    queue, marker = str(uuid.uuid4()), uuid.uuid4().hex
    declared = amqp_session(WORKER, "celery_worker", [["declare", queue], ["bind", queue, EXCHANGE, queue]], BROKER)
    assert declared["ok"], declared
    try:
        published = amqp_session(CLIENT, "celery_client", [["publish", queue, 5, marker, EXCHANGE]], BROKER)
        assert published["ok"], published
        types = dict(line.split("\t") for line in host(BROKER).check_output(
            "rabbitmqctl --quiet list_queues -p celery name type --no-table-headers").splitlines())
        assert types[queue] == "quorum", types
        consumed = amqp_session(WORKER, "celery_worker", [["get", queue, 100]], BROKER)
        assert consumed["ok"], consumed
        assert consumed["result"][0] == [f"{marker}-{i}" for i in range(5)]
    finally:
        amqp_session(WORKER, "celery_worker", [["delete", queue]], BROKER)


PUBLISHERS = [("celery_clients", "celery_client"), ("celery_beat", "celery_producer")]


@pytest.mark.parametrize("kind, user", PUBLISHERS)
@pytest.mark.parametrize("action", [
    ["bind", "web", EXCHANGE, "#"],     # every task would also land in web and run twice
    ["bind", str(uuid.uuid4()), EXCHANGE, "#"],   # a queue of its own that copies every task
    ["delete", "media"],                # the queue and the tasks in it would be gone
    ["declare", "web"],                 # even redeclaring the same queue is configuring it
    ["exchange", EXCHANGE],
], ids=["bind-task-queue", "bind-own-queue", "delete-task-queue", "declare-task-queue", "declare-task-exchange"])
def test_a_publisher_can_only_publish(kind, user, action):
    """What a broken-into client or beat host could try with its own broker
    user and certificate: each is refused, and the task queues are as the
    broker play declared them. (A reply queue of its own it may declare,
    as rpc:// needs; binding one needs read on the exchange, which it lacks.
    It may declare the event exchange: Celery's event dispatcher does before
    every first event.)"""
    source = group(kind)[0]
    steps = [["declare", action[1]], action] if action[0] == "bind" and action[1] != "web" else [action]
    try:
        denied = amqp_session(source, user, steps, BROKER)
    finally:
        if len(steps) == 2:   # the reply-like queue it was allowed to declare
            amqp_session(WORKER, "celery_worker", [["delete", action[1]]], BROKER)
    assert not denied["ok"] and "access_refused" in denied["error"].lower().replace(" ", "_"), denied
    queues = json.loads(host(BROKER).check_output(
        "rabbitmqctl --quiet list_queues -p celery name type --formatter json"))
    assert {q["name"]: q["type"] for q in queues if q["name"] in ("web", "media")} == {"web": "quorum", "media": "quorum"}
    bindings = host(BROKER).check_output(
        "rabbitmqctl --quiet list_bindings -p celery source_name destination_name routing_key --no-table-headers")
    assert not [line for line in bindings.splitlines() if line.split("\t")[0] == EXCHANGE and line.split("\t")[-1] == "#"], \
        bindings


def test_every_stable_feature_flag_is_enabled():
    """A new RabbitMQ 4.0.5 node leaves the stable flag detailed_queues_endpoint
    disabled (and an upgraded one every flag its new version brought): a
    later version may refuse to start without them. broker.yml enables every
    stable flag once all members run one version."""
    flags = json.loads(host(BROKER).check_output(
        "rabbitmqctl --quiet list_feature_flags name state stability --formatter json"))
    assert len(flags) > 10, flags
    assert [f["name"] for f in flags if f["stability"] == "stable" and f["state"] != "enabled"] == [], flags


def test_the_broker_never_refused_what_celery_itself_does():
    """Celery's event dispatcher declares the event exchange before its first
    event on each connection. When producers lost configure on it, beat's
    task-sent events were refused every 10 s (access_refused in the broker
    log) while every task still ran: only the log showed it. The attacks
    above never touch the event exchange, so any such line is Celery's."""
    log = host(BROKER).check_output("cat /var/log/rabbitmq/*.log")
    refused = [line for line in log.splitlines() if "access_refused" in line and "'celeryev'" in line]
    assert refused == [], refused[-5:]


def test_guest_cannot_log_in():
    assert "guest" not in host(BROKER).check_output("rabbitmqctl --quiet list_users")
    attempt = amqp_session(CLIENT, "guest", [], BROKER, secret="guest")
    assert not attempt["ok"], attempt
    assert "access_refused" in attempt["error"].lower().replace(" ", "_"), attempt


# Reads every process's command line as often as it can until the stop file
# appears; the secret comes on stdin (never an argument of this process).
# Prints how many rounds it made and each command line that held the secret.
_WATCH = r"""
import json, os, sys
secret, stop = sys.stdin.readline().rstrip("\n").encode(), sys.argv[1]
rounds, seen = 0, set()
while not os.path.exists(stop):
    rounds += 1
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                line = handle.read()
        except OSError:
            continue
        if secret in line:
            seen.add(line.replace(secret, b"<secret>").replace(b"\0", b" ").decode(errors="replace"))
print(json.dumps({"rounds": rounds, "seen": sorted(seen)}))
"""


def test_a_password_changed_behind_the_bundle_is_set_back_and_the_next_run_changes_nothing():
    # The users are managed over the management API (rabbitmq_api_user); the
    # collection's API mode fails on any password change (community.rabbitmq
    # #217), so a password the broker refuses is set from a definitions file
    # of password hashes. A rotation in vault takes the same path as this
    # drift. Meanwhile every command line on the broker is watched: the
    # password must be on none (rabbitmqctl change_password would show it to
    # `ps`). A process started with it as an argument proves the watch sees.
    # The broker play alone (services/): the users are set there, and every
    # host's firewall, which broker.yml applies first, is not under test.
    wanted = password("celery_client")
    host(BROKER).check_output("rabbitmqctl --quiet change_password celery_client %s", "drifted-" + uuid.uuid4().hex)
    token = uuid.uuid4().hex[:8]
    stop, report, secret = f"/tmp/stop-{token}", f"/tmp/watch-{token}.json", f"/tmp/secret-{token}"
    # Whatever fails, the password is set back: a drifted one left behind
    # refuses every later test's client.
    try:
        try:
            assert host(BROKER).run("rabbitmqctl --quiet authenticate_user celery_client %s", wanted).rc != 0
            put_file(BROKER, secret, wanted + "\n")
            host(BROKER).check_output("nohup python3 -c %s %s < %s > %s 2>&1 &", _WATCH, stop, secret, report)
            control = host(BROKER).run("sh -c 'sleep 1' control-%s", wanted)
            assert control.rc == 0
            assert recap_changed(run_playbook("playbooks/services/broker.yml"), BROKER) >= 1
        finally:
            host(BROKER).run("touch %s; rm -f %s", stop, secret)
        watched = wait_json(BROKER, report)
        assert watched["rounds"] > 50, watched
        # Only the control process (and the shell that started it) held it.
        assert watched["seen"] and all("control-<secret>" in line for line in watched["seen"]), watched
        assert host(BROKER).run("rabbitmqctl --quiet authenticate_user celery_client %s", wanted).rc == 0
        assert recap_changed(run_playbook("playbooks/services/broker.yml"), BROKER) == 0
    finally:
        host(BROKER).run("rabbitmqctl --quiet change_password celery_client %s", wanted)


def test_plugins_changed_by_hand_are_set_back_and_a_run_with_nothing_to_change_leaves_rabbitmq_plugins_alone():
    # The role reads the file rabbitmq-plugins keeps the enabled plugins in
    # and runs the module (an Erlang VM boot, the broker play's slowest step)
    # only when the file differs from rabbitmq_plugins. A plugin disabled and
    # another enabled by hand must both be set back by the next run, and the
    # run after must skip the module. The broker play alone (services/): its
    # firewall is not what is tested here. Each rabbitmq-plugins call boots an
    # Erlang VM (1.5 to 3 s): the hand changes are set back by hand only when
    # the run did not.
    broker = host(BROKER)
    deployed = sorted(broker.check_output("rabbitmq-plugins --quiet list --enabled --minimal").split())
    assert "rabbitmq_prometheus" in deployed and "rabbitmq_top" not in deployed, deployed
    explicit = None
    try:
        broker.check_output("rabbitmq-plugins --quiet disable rabbitmq_prometheus")
        broker.check_output("rabbitmq-plugins --quiet enable rabbitmq_top")
        assert recap_changed(run_playbook("playbooks/services/broker.yml"), BROKER) >= 1
        explicit = sorted(broker.check_output("rabbitmq-plugins --quiet list --enabled --minimal").split())
        assert explicit == deployed, explicit
        again = run_playbook("playbooks/services/broker.yml")
        assert recap_changed(again, BROKER) == 0
        assert again.outcome("rabbitmq : Enable the listed plugins, and only those", BROKER) == "skipping"
    finally:
        if explicit != deployed:
            broker.run("rabbitmq-plugins --quiet disable rabbitmq_top")
            broker.run("rabbitmq-plugins --quiet enable rabbitmq_prometheus")


def put_file(name, path, content):
    """Write `content` to `path` on host `name` (mode 0600) without putting
    it on any command line: through the connection's standard input."""
    # The container's name: the lab's inventory names it in ansible_host,
    # molecule's names the host after it.
    container = inventory_vars(name).get("ansible_host") or name
    result = subprocess.run(["docker", "exec", "-i", container, "sh", "-c", f"umask 077 && cat > {path}"],
                            input=content, text=True, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def wait_json(name, path, deadline=30):
    """The JSON document the host writes to `path`, once it is complete."""
    return json.loads(wait_until(lambda: host(name).run("cat %s", path).stdout.strip(), deadline, interval=1))


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
# - management_metrics_collection: the management plugin's own statistics,
#   which the management UI, Flower's broker view and the queue runbooks read.
# transient_nonexcl_queues is refused (as RabbitMQ 4.3 does): Celery 5.7's
# rpc:// reply queues are durable, its control and event queues exclusive
# (control_queue_exclusive, event_queue_exclusive).
KNOWN_DEPRECATIONS = {"management_metrics_collection"}


def test_broker_log_shows_no_other_deprecated_feature_in_use():
    log = host(BROKER).run("cat /var/log/rabbitmq/rabbit@*.log").stdout
    # A feature in use is a warning; a use the broker refused (the next
    # test's transient queue, in an earlier run of this suite on the lab)
    # is an error, and no use.
    used = set(re.findall(r"\[warning\] <[^>]*> Deprecated features: `(\w+)`", log))
    assert used <= KNOWN_DEPRECATIONS, used - KNOWN_DEPRECATIONS


def test_broker_refuses_a_transient_non_exclusive_queue():
    # As RabbitMQ 4.3 does by default; the cluster's own queues are durable or
    # exclusive (Celery 5.7's rpc:// reply queues included: every test of a
    # result proves they are still declared).
    queue = f"{uuid.uuid4()}"   # a name the client may declare (its reply queues)
    refused = amqp_session(CLIENT, "celery_client", [["declare_transient", queue]], BROKER)
    assert not refused["ok"] and "transient_nonexcl_queues" in refused["error"], refused

