"""Celery through the real broker: routing to the pools, limits, warm restarts."""
import json
import re

import pytest
from clusterlib import CELERY, celery_cli, celery_python, group, host, inventory_vars, run_playbook, wait_marks, wait_until

CLIENT = group("celery_clients")[0]
MONITOR = group("flower")[0]    # inspect and control belong to the monitoring user
WORKERS_OF_FEEDS = group("celery_workers")[0]
FAMILIES = {"feed.tasks.fetch": "feeds", "web.tasks.render": "web",
            "video.tasks.transcode": "media", "image.tasks.thumbnail": "media"}


def pools_by_queue():
    """queue -> the set of pool node names (pool@host) that consume it."""
    consumers = {}
    for worker in group("celery_workers"):
        for pool in inventory_vars(worker).get("celery_worker_pools", []):
            for queue in pool["queues"]:
                consumers.setdefault(queue, set()).add(f"{pool['name']}@{worker}")
    return consumers


SEND = """
import json
from celery_cluster import app
calls = {calls}
results = [app.send_task(name, args=args) for name, args in calls]
out = []
for result in results:
    try:
        out.append({{"ok": True, "value": result.get(timeout={timeout})}})
    except Exception as error:
        out.append({{"ok": False, "error": type(error).__name__ + ": " + str(error)}})
print(json.dumps(out))
"""


def send(calls, timeout=60):
    return celery_python(CLIENT, SEND.format(calls=json.dumps(calls), timeout=timeout), timeout=timeout + 60)


def test_each_task_family_runs_on_a_pool_that_consumes_its_queue():
    consumers = pools_by_queue()
    calls = [[name, [i]] for name in FAMILIES for i in range(3)]
    for (name, _), result in zip(calls, send(calls)):
        assert result["ok"], result
        queue = FAMILIES[name]
        assert result["value"]["routing_key"] == queue
        assert result["value"]["worker"] in consumers[queue], (name, result["value"]["worker"], consumers[queue])


def test_every_pool_consumes_exactly_its_own_queues():
    out = celery_cli(MONITOR, "inspect", "active_queues", "--json", "--timeout", "10")
    assert out.rc == 0, out.stderr
    active = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {}
    for queue, nodes in pools_by_queue().items():
        for node in nodes:
            expected.setdefault(node, set()).add(queue)
    assert {node: {q["name"] for q in queues} for node, queues in active.items()} == expected


def test_soft_time_limit_raises_inside_the_task():
    [result] = send([["feed.tasks.sleep", [20]]])
    assert result["ok"] and result["value"]["soft_time_limit"] is True, result


def test_a_client_waiting_on_a_result_keeps_its_connection():
    # Celery 5.6's rpc:// consumer took every quiet second of a wait for a lost
    # connection and reconnected, dropping its auto-delete reply queue each
    # time: a result sent in that gap was lost (roles/celery/README.md). The
    # warning it logs then goes to stderr, read here with stdout.
    out = host(CLIENT).run("timeout 180 " + CELERY + " python -c %s 2>&1",
                           SEND.format(calls=json.dumps([["feed.tasks.sleep", [20]]]), timeout=60))
    assert out.rc == 0, out.stdout[-2000:]
    [result] = json.loads(out.stdout.splitlines()[-1])
    # Stopped by the feeds queue's 3 s soft limit: the client waited 3 s or more.
    assert result["ok"] and result["value"]["soft_time_limit"] is True, result
    assert "reconnect" not in out.stdout, out.stdout[-2000:]


def test_hard_time_limit_kills_a_runaway_task_and_the_pool_goes_on():
    [killed] = send([["feed.tasks.spin", [60]]])
    assert not killed["ok"] and "TimeLimitExceeded" in killed["error"], killed
    [after] = send([["feed.tasks.fetch", [1]]])
    assert after["ok"], after


def test_rate_limit_holds():
    calls = [["image.tasks.thumbnail", [i]] for i in range(6)]   # annotated 2/s
    results = send(calls)
    assert all(r["ok"] for r in results), results
    started = sorted(r["value"]["started"] for r in results)
    # 6 tasks at 2/s: at least 5 intervals of 0.5 s between the first and last start.
    assert started[-1] - started[0] >= 2.0, started


def pool_pids():
    return {worker: host(worker).check_output(
        "systemctl show --property MainPID --value 'celery-worker@*.service' | sort").split()
        for worker in group("celery_workers")}


def test_changing_a_setting_restarts_workers_without_losing_a_task_in_flight():
    # A producer publishes a half-second task every quarter second throughout
    # the playbook run, so tasks are queued and running when the pools stop.
    # Each leaves a mark on the worker that ran it: none may be missing.
    client = host(CLIENT)
    client.check_output("rm -f /tmp/restart.stop /tmp/restart.tokens")
    loop = ("import os, time, uuid\nfrom celery_cluster import app\n"
            "out = open('/tmp/restart.tokens', 'a', buffering=1)\n"
            "while not os.path.exists('/tmp/restart.stop'):\n"
            "    t = uuid.uuid4().hex\n    app.send_task('web.tasks.mark', [t, 0.5], ignore_result=True)\n"
            "    out.write(t + '\\n'); time.sleep(0.25)\n")
    before = pool_pids()
    client.check_output("(timeout 900 " + CELERY + " python -c %s > /tmp/restart.log 2>&1 &)", loop)
    try:
        # A real configuration change, applied by the real playbook: the pools restart (warm).
        changed = run_playbook("playbooks/celery.yml", "--limit", "celery_workers",
                               "--extra-vars", json.dumps({"celery_worker_log_level": "warning"}))
        assert changed.returncode == 0, changed.stdout[-3000:]
        assert "RUNNING HANDLER [celery_worker : Restart celery workers]" in changed.stdout
        # A few more tasks, published after the restart.
        published = len(client.check_output("cat /tmp/restart.tokens").split())
        wait_until(lambda: len(client.check_output("cat /tmp/restart.tokens").split()) >= published + 8, 30, 1)
    finally:
        client.check_output("touch /tmp/restart.stop")
    after = pool_pids()
    assert all(not set(before[w]) & set(after[w]) for w in before), (before, after)  # every pool restarted
    wait_until(lambda: client.run("pgrep -f '[r]estart.tokens'").rc != 0, 30, 1)   # the producer is done
    tokens = client.check_output("cat /tmp/restart.tokens").split()
    assert len(tokens) >= 40, client.run("cat /tmp/restart.log").stdout[-2000:]
    missing = wait_marks(tokens, 180)
    web = host(WORKERS_OF_FEEDS).run("journalctl --no-pager --unit celery-worker@web.service --since=-10min | tail -n 30").stdout
    assert not missing, f"{len(missing)} of {len(tokens)} tasks published across the restart never ran\n{web}"
    restored = run_playbook("playbooks/celery.yml", "--limit", "celery_workers")
    assert restored.returncode == 0, restored.stdout[-3000:]


@pytest.mark.parametrize("query", ["registered", "stats"])
def test_inspect_sees_every_pool(query):
    out = celery_cli(MONITOR, "inspect", query, "--json", "--timeout", "10")
    assert out.rc == 0, out.stderr
    nodes = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert nodes == {node for nodes in pools_by_queue().values() for node in nodes}


def test_clients_cannot_broadcast_control_commands():
    out = celery_cli(CLIENT, "control", "shutdown", "--timeout", "5")
    assert out.rc != 0 and "ACCESS_REFUSED" in out.stdout + out.stderr, out.stdout + out.stderr
    assert celery_cli(MONITOR, "inspect", "ping", "--timeout", "10").rc == 0   # and the workers still answer


EXPOSURE = re.compile(r"Overall exposure level for (\S+): ([0-9.]+)")


def celery_units():
    """(host, unit) of every pool and of beat."""
    units = [(worker, f"celery-worker@{pool['name']}.service") for worker in group("celery_workers")
             for pool in inventory_vars(worker).get("celery_worker_pools", [])]
    return units + [(beat, "celery-beat.service") for beat in group("celery_beat")]


def exposure(name, unit):
    """The overall exposure `systemd-analyze security` gives the unit."""
    out = host(name).check_output("systemd-analyze security --no-pager %s", unit)
    found = EXPOSURE.search(out)
    assert found, out[-500:]
    return float(found.group(2))


def test_pools_and_beat_are_confined_and_cannot_write_where_code_is_imported(record_property):
    """The units that run the app's code, Flower's too, are confined alike
    (the celery role's celery_unit_confinement: read-only system but their
    state directory, no privileges, capabilities or
    devices, restricted address families and system calls):
    `systemd-analyze security` rates each 3.0 or less (it rated them 8.4
    EXPOSED with the four directives they had). Celery imports the app with
    the working directory first on sys.path: it is `/`, which the celery
    user cannot write, and the state directory is writable by the service
    only."""
    report = {}
    for name, unit in celery_units():
        report[f"{name}/{unit}"] = exposure(name, unit)
        assert host(name).check_output("systemctl show --property WorkingDirectory --value %s", unit) == "/"
        assert host(name).run("runuser -u celery -- test -w /").rc != 0, name
        assert host(name).run("runuser -u celery -- touch /opt/celery/venv/lib/planted.py").rc != 0, name
    # Flower renders the same confinement (celery_unit_confinement); its
    # working directory is its own state directory, which it writes.
    for name in group("flower"):
        report[f"{name}/flower.service"] = exposure(name, "flower.service")
    record_property("systemd_exposure", report)
    print("systemd-analyze security exposure:", json.dumps(report, sort_keys=True))
    assert all(score <= 3.0 for score in report.values()), report


def test_a_pool_that_fails_at_start_fails_the_run_naming_it_with_its_journal():
    """A setting the configuration module takes but the pools refuse when
    they start (a state database in a directory that does not exist): the
    run that deploys it fails on that host, naming each pool and printing
    its journal, instead of ending with rc=0 while systemd restarts the
    pools in a loop. The next run without it passes, the pools up again."""
    worker = group("celery_workers")[-1]
    units = [f"celery-worker@{pool['name']}.service" for pool in inventory_vars(worker)["celery_worker_pools"]]
    bad = run_playbook("playbooks/celery.yml", "--limit", worker, "--extra-vars",
                       json.dumps({"celery_extra_settings": {"worker_state_db": "/var/lib/celery-typo/worker.state"}}))
    try:
        said = " ".join(bad.stdout.split())
        assert bad.returncode != 0, said[-3000:]
        assert f"{worker}: {', '.join(units)} did not stay up after this run started or restarted it" in said, said[-3000:]
        assert "/var/lib/celery-typo/worker.state" in said, said[-3000:]   # the journal, with Celery's own error
    finally:
        good = run_playbook("playbooks/celery.yml", "--limit", worker)
    assert good.returncode == 0, good.stdout[-3000:]
    for unit in units:
        assert host(worker).service(unit).is_running, unit


# The packages role reads the installed packages once per run and calls apt
# only for a missing one: a package removed by hand must still come back.
def test_a_package_removed_by_hand_is_installed_again_by_the_next_run():
    client = host(CLIENT)
    client.check_output("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q python3-pip")
    assert not client.package("python3-pip").is_installed
    result = run_playbook("playbooks/celery.yml", "--limit", CLIENT)
    assert result.changed(CLIENT) > 0
    assert client.package("python3-pip").is_installed


# The celery role writes its directories and small files in loops (one task
# each): every item must still carry its own owner and mode, and be put back.
def test_the_runtime_directories_and_files_changed_by_hand_are_set_back_by_the_next_run():
    client = host(CLIENT)
    client.check_output("chmod 0755 /etc/celery && chmod 0644 /etc/celery/publisher.env"
                        " && chown root:root /var/lib/celery && rm /etc/celery-cluster/celery.json")
    result = run_playbook("playbooks/celery.yml", "--limit", CLIENT)
    assert result.changed(CLIENT) > 0
    wanted = {"/etc/celery": (0o750, "root", "celery"), "/etc/celery/publisher.env": (0o640, "root", "celery"),
              "/var/lib/celery": (0o750, "celery", "celery"), "/etc/celery-cluster/celery.json": (0o644, "root", "root")}
    for path, (mode, user, grp) in wanted.items():
        found = client.file(path)
        assert (found.exists, found.mode, found.user, found.group) == (True, mode, user, grp), path
    assert json.loads(client.file("/etc/celery-cluster/celery.json").content_string)["app"] == "celery_cluster"
