"""Celery through the real broker: routing to the pools, limits, warm restarts."""
import json
import time

import pytest
from clusterlib import CELERY_ENV, celery_cli, celery_python, group, host, inventory_vars, run_playbook

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
from celery_example.app import app
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


def test_changing_a_setting_restarts_workers_without_losing_a_task_in_flight():
    # rpc:// returns results to the process that sent the tasks, so one client
    # process sends them and waits, in the background, across the restart.
    report, log = "/var/lib/celery/restart-test.json", "/var/lib/celery/restart-test.log"
    waiter = f"""
import json
from celery_example.app import app
results = [app.send_task("feed.tasks.sleep", args=[2]) for _ in range(12)]
print("sent", [r.id for r in results], flush=True)
slept = []
for r in results:
    slept.append(r.get(timeout=400)["slept"])
    print("done", r.id, flush=True)
open("{report}", "w").write(json.dumps(slept))
"""
    client = host(CLIENT)
    client.run("rm -f %s %s", report, log)
    client.check_output("runuser -u celery -- " + CELERY_ENV
                        + " setsid nohup /opt/celery/venv/bin/python -c %s > %s 2>&1 < /dev/null &", waiter, log)
    deadline = time.monotonic() + 60
    while "sent" not in client.run("cat %s", log).stdout and time.monotonic() < deadline:
        time.sleep(1)   # the tasks are queued and running when the change lands
    # A real configuration change, applied by the real playbook: the pools restart (warm).
    changed = run_playbook("playbooks/celery.yml", "--limit", "celery_workers",
                           "--extra-vars", json.dumps({"celery_worker_log_level": "warning"}))
    assert changed.returncode == 0, changed.stdout[-3000:]
    assert "RUNNING HANDLER [celery_worker : Restart celery workers]" in changed.stdout
    deadline = time.monotonic() + 420
    while not client.file(report).exists and time.monotonic() < deadline:
        time.sleep(3)
    progress = client.run("cat %s", log).stdout
    feeds = host(WORKERS_OF_FEEDS).run("journalctl --no-pager --unit celery-worker@feeds.service --since=-10min | tail -n 40").stdout
    assert client.file(report).exists, f"client:\n{progress}\nfeeds pool:\n{feeds}"
    assert json.loads(client.file(report).content_string) == [2] * 12
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
