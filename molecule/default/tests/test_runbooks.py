"""Day-2 runbooks, run for real against the whole cluster."""
import json
import os
import re
import subprocess
import time
import uuid

import yaml
from clusterlib import (INVENTORY, PROJECT, amqp_session, celery_cli, celery_python, group, host, inventory_groups,
                        inventory_vars, run_playbook, wait_until)

BROKER = group("rabbitmq")[0]
WORKER = group("celery_workers")[0]
BEAT = group("celery_beat")[0]
NEW_BEAT = group("celery_clients")[0]
BEAT_ON_WORKER = group("celery_workers")[-1]
CLIENT = group("celery_clients")[0]
MONITOR = group("flower")[0]


def pools_of(worker):
    return [pool["name"] for pool in inventory_vars(worker).get("celery_worker_pools", [])]


def expected_queues():
    """pool@host -> the queues it consumes, from the inventory."""
    return {f"{pool['name']}@{worker}": sorted(pool["queues"]) for worker in group("celery_workers")
            for pool in inventory_vars(worker).get("celery_worker_pools", [])}


def active_queues():
    out = celery_cli(MONITOR, "inspect", "active_queues", "--json", "--timeout", "10")
    assert out.rc == 0, out.stderr
    return {node: sorted(q["name"] for q in queues) for node, queues in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def every_pool_answers():
    """True once every pool of the inventory answers with exactly its queues."""
    try:
        return active_queues() == expected_queues()
    except (AssertionError, ValueError, IndexError):   # no answer yet, or no JSON
        return False


# Fire and forget: tasks that keep the feeds pool busy for a while.
SEND_SLEEPS = """
import json
from celery_cluster import app
print(json.dumps([app.send_task("feed.tasks.sleep", args=[{seconds}]).id for _ in range({count})]))
"""


def test_status_runbook_reports_queues_workers_and_beat():
    queue = f"status-{uuid.uuid4().hex[:8]}"
    assert amqp_session(WORKER, "celery_worker", [["declare", queue], ["publish", queue, 4, "s"]], BROKER)["ok"]
    try:
        # RabbitMQ refreshes queue statistics every 5 s: run it until they count the 4.
        result = wait_until(lambda: run_playbook("playbooks/runbooks/status.yml"), 180, interval=3,
                            done=lambda run: run.returncode != 0 or f"{queue} 4 4 0" in run.stdout)
        assert result.returncode == 0, result.stdout[-3000:]
        assert f"{queue} 4 4 0" in result.stdout, result.stdout[-3000:]
        for worker in group("celery_workers"):
            assert re.search(rf"@{worker}: ", result.stdout), worker
        assert f"Beat runs on: {BEAT}" in result.stdout
        # Every worker is listed with exactly the queues it consumes.
        for node, queues in expected_queues().items():
            listed = re.search(rf"{re.escape(node)}: ([a-z0-9_, -]+)", result.stdout)
            assert listed and sorted(listed.group(1).strip().split(", ")) == queues, (node, result.stdout[-3000:])
    finally:
        amqp_session(WORKER, "celery_worker", [["delete", queue]], BROKER)


def test_status_runbook_exits_non_zero_naming_what_is_wrong():
    """A pool stopped behind the bundle's back, another one hung (its unit
    active, its process frozen), a host whose firewall table was deleted
    with its firewall watch stopped first, and one rule edited on another:
    status.yml names each, with the host, and exits non-zero, so a
    scheduler or an alerting check can run it; repaired, it prints each
    host's health line and exits 0."""
    pool, hung = (entry["name"] for entry in inventory_vars(WORKER)["celery_worker_pools"][:2])
    unit, hung_unit = f"celery-worker@{pool}.service", f"celery-worker@{hung}.service"
    client, flower = group("celery_clients")[0], group("flower")[0]
    host(WORKER).check_output("systemctl stop %s", unit)
    # SIGSTOP stops the pool's main process, which answers remote control; systemd still sees it active.
    host(WORKER).check_output("systemctl kill --kill-whom=main --signal=SIGSTOP %s", hung_unit)
    # The timer and its service: a check already running when the timer
    # stops would put the table back (seen once in CI).
    host(client).check_output("systemctl stop celery-firewall-watch.timer celery-firewall-watch.service")
    host(client).check_output("nft delete table inet celery_filter")
    host(flower).check_output("systemctl stop celery-firewall-watch.timer celery-firewall-watch.service")
    host(flower).check_output("nft add rule inet celery_filter input tcp dport 8080 accept")
    try:
        broken = run_playbook("playbooks/runbooks/status.yml")
    finally:
        host(WORKER).check_output("systemctl kill --kill-whom=main --signal=SIGCONT %s", hung_unit)
        host(WORKER).check_output("systemctl start %s", unit)
        for name in (client, flower):
            host(name).check_output("systemctl reload nftables")
            host(name).check_output("systemctl start celery-firewall-watch.timer")
        # The restarted pool is healthy once it answers, not when systemd has started it.
        assert wait_until(every_pool_answers, 120, 3), "the restarted pool does not answer"
    said = " ".join(broken.stdout.split())
    assert broken.returncode != 0, broken.stdout[-3000:]
    assert f"{WORKER}: {unit} is inactive/dead" in said, said[-3000:]
    assert f"{client}: the firewall table is missing" in said, said[-3000:]
    assert f"{client}: the firewall watch is not running (celery-firewall-watch.timer inactive)" in said, said[-3000:]
    assert f"{flower}: the firewall table differs from the one loaded (rules differ from the ones loaded: + tcp dport 8080 accept)" in said, said[-3000:]
    assert f"{WORKER}: the pool {hung}@{WORKER} runs but did not answer celery inspect within 10 s" in said, said[-3000:]
    assert f"{pool}@{WORKER} runs but" not in said, said[-3000:]   # a stopped pool is named once, as stopped
    assert "Problems: 6" in said, said[-3000:]
    healthy = run_playbook("playbooks/runbooks/status.yml")
    said = " ".join(healthy.stdout.split())
    assert healthy.returncode == 0 and "Problems: 0" in said, said[-3000:]
    assert f"{WORKER}: firewall ok; firewall watch active, restore on; " in said, said[-3000:]
    assert f"{unit} active/running" in said, said[-3000:]
    assert "Feature flags disabled: none" in said, said[-3000:]


def _lines_waiting(name):
    """Lines in the host's log forwarding queue, from rsyslog's queue state file."""
    out = host(name).run("cat /var/spool/rsyslog/*.qi").stdout
    found = re.search(r"\+iQueueSize:2:\d+:(\d+):", out)
    return int(found.group(1)) if found else 0


def test_status_runbook_names_log_lines_that_wait_to_be_forwarded():
    """With the log server's rsyslog stopped, 300 lines logged on a worker
    wait in its queue: status.yml names them, counted in lines (a disk queue's
    files are no measure: the one being written keeps lines already sent
    until it reaches 1 MiB, and 300 lines are far below that)."""
    logserver = group("logserver")[0]
    host(logserver).check_output("systemctl stop syslog.socket rsyslog.service")
    try:
        host(WORKER).check_output("seq 300 | logger -t status-backlog")
        assert wait_until(lambda: _lines_waiting(WORKER) >= 300, 60), _lines_waiting(WORKER)
        waiting = run_playbook("playbooks/runbooks/status.yml")
    finally:
        host(logserver).check_output("systemctl start syslog.socket rsyslog.service")
    said = " ".join(waiting.stdout.split())
    assert waiting.returncode != 0, said[-3000:]
    assert re.search(rf"{WORKER}: \d+ log lines wait to be forwarded", said), said[-3000:]
    # The log server back, the queue drains.
    assert wait_until(lambda: _lines_waiting(WORKER) == 0, 120, 3), _lines_waiting(WORKER)


def test_status_runbook_lists_the_tasks_running_now():
    # feeds runs two at a time; each sleep stops at its 3 s soft limit.
    ids = celery_python(CLIENT, SEND_SLEEPS.format(seconds=20, count=24))
    # Not its exit code: that is about health (the test above), and a health
    # problem elsewhere (once in CI, a log backlog on the beat host) must not
    # hide the tasks, which status.yml prints before it fails.
    for _ in range(6):
        result = run_playbook("playbooks/runbooks/status.yml")
        assert "Tasks running now:" in result.stdout, result.stdout[-3000:]
        running = re.findall(r"(\S+@\S+): feed\.tasks\.sleep ([0-9a-f-]{36})", result.stdout)
        if running:
            break
    assert running, result.stdout[-3000:]
    count = int(re.search(r"Tasks running now: (\d+)", result.stdout).group(1))
    assert count >= len(running) > 0
    for node, task_id in running:
        assert node.startswith("feeds@") and task_id in ids, (node, task_id)


def test_purge_runbook_needs_the_queue_named_twice():
    queue = f"purge-{uuid.uuid4().hex[:8]}"
    assert amqp_session(WORKER, "celery_worker", [["declare", queue], ["publish", queue, 5, "p"]], BROKER)["ok"]
    try:
        refused = run_playbook("playbooks/runbooks/purge-queue.yml", "-e", f"runbook_queue={queue}")
        assert refused.returncode != 0 and "runbook_confirm" in refused.stdout, refused.stdout[-2000:]
        wrong = run_playbook("playbooks/runbooks/purge-queue.yml", "-e", f"runbook_queue={queue}",
                             "-e", "runbook_confirm=feeds")
        assert wrong.returncode != 0 and "runbook_confirm" in wrong.stdout, wrong.stdout[-2000:]
        # The runbook reports the broker's counts, refreshed every 5 s: watch them reach the 5.
        counted = wait_until(lambda: run_playbook("playbooks/runbooks/queues.yml"), 60, interval=2,
                             done=lambda run: run.returncode != 0
                             or any(queue in line.split() and line.split()[-3:] == ["5", "5", "0"]
                                    for line in run.stdout.splitlines()))
        assert counted.returncode == 0, counted.stdout[-3000:]
        purged = run_playbook("playbooks/runbooks/purge-queue.yml", "-e", f"runbook_queue={queue}",
                              "-e", f"runbook_confirm={queue}")
        assert purged.returncode == 0, purged.stdout[-3000:]
        assert f"Purged {queue} in vhost celery: 5 ready messages deleted" in purged.stdout, purged.stdout[-2000:]
        left = amqp_session(WORKER, "celery_worker", [["get", queue, 10]], BROKER)
        assert left["ok"] and left["result"] == [[]], left
    finally:
        amqp_session(WORKER, "celery_worker", [["delete", queue]], BROKER)


def _unit_times(worker, unit):
    """(stopping, started) journal times of a unit's last restart on a host."""
    out = host(worker).check_output(
        "journalctl --no-pager --output short-unix --unit %s --since=-20min", unit)
    stopping = [float(l.split()[0]) for l in out.splitlines() if "Stopping " in l]
    started = [float(l.split()[0]) for l in out.splitlines() if "Started " in l]
    return (max(stopping) if stopping else None), (max(started) if started else None)


def test_rolling_restart_runbook_restarts_one_host_at_a_time_and_loses_no_task():
    workers = group("celery_workers")
    pids = {(w, p): host(w).check_output("systemctl show --property=MainPID --value celery-worker@%s", p)
            for w in workers for p in pools_of(w)}
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    runbook = subprocess.Popen(
        ["ansible-playbook", "-i", INVENTORY, f"--extra-vars=@{os.environ['CLUSTER_SECRETS']}",
         os.path.join(PROJECT, "playbooks/runbooks/rolling-restart.yml")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    # Tasks of every family while the pools drain and restart: each must run once.
    families = ["feed.tasks.fetch", "web.tasks.render", "video.tasks.transcode", "image.tasks.thumbnail"]
    sent = celery_python(CLIENT, f"""
import json, time
from celery_cluster import app
results = []
for i in range(10):
    results += [app.send_task(name, args=[i]) for name in {families!r}]
    results.append(app.send_task("feed.tasks.sleep", args=[2]))
    time.sleep(3)
out = []
for r in results:
    try:
        out.append({{"ok": True, "worker": r.get(timeout=400)["worker"]}})
    except Exception as error:
        out.append({{"ok": False, "error": repr(error)}})
print(json.dumps(out))
""", timeout=600)
    stdout, _ = runbook.communicate(timeout=900)
    assert runbook.returncode == 0, stdout[-4000:]
    assert len(sent) == 50 and all(r["ok"] for r in sent), [r for r in sent if not r["ok"]]
    # Each host was drained and every one of its pools got a new process...
    for worker in workers:
        n = len(pools_of(worker))
        assert re.search(rf"Rolling restart: {worker} drained and restarted [^']*?new processes:\s+{n}/{n}", stdout,
                         re.S), stdout[-4000:]
        for pool in pools_of(worker):
            now = host(worker).check_output("systemctl show --property=MainPID --value celery-worker@%s", pool)
            assert now != pids[(worker, pool)], (worker, pool)
    # ...one host at a time: a host's pools stopped only after the previous host's were back.
    order = [m.group(1) for m in re.finditer(r"Rolling restart: (\S+) drained", stdout)]
    assert order == workers, order
    for before, after in zip(workers, workers[1:]):
        back = max(_unit_times(before, f"celery-worker@{p}.service")[1] for p in pools_of(before))
        stopping = min(_unit_times(after, f"celery-worker@{p}.service")[0] for p in pools_of(after))
        assert back < stopping, (before, back, after, stopping)
    # And every pool consumes its queues again.
    assert active_queues() == expected_queues()


def _moved_inventory(new_beat=NEW_BEAT):
    """An inventory with beat on new_beat. A client leaves celery_clients and
    the old beat host leaves the Celery groups (it stays in the inventory); a
    worker host stays a worker, a host in both groups, and the old beat host
    becomes a client (a layout site.yml runs)."""
    with open(INVENTORY, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    groups = inventory_groups(data)
    all_hosts = data.setdefault("all", {}).setdefault("hosts", {}) or {}
    data["all"]["hosts"] = all_hosts
    keep = all_hosts.get(BEAT) or groups["celery_beat"]["hosts"][BEAT] or {}
    from_clients = new_beat in (groups["celery_clients"]["hosts"] or {})
    groups["celery_beat"]["hosts"] = {new_beat: groups["celery_clients"]["hosts"].pop(new_beat) if from_clients else None}
    for name, group_data in groups.items():
        if name != "all" and (from_clients or name != "celery"):
            (group_data.get("hosts") or {}).pop(BEAT, None)
    all_hosts[BEAT] = keep
    if not from_clients:
        groups["celery_clients"]["hosts"][BEAT] = None
    path = os.path.join(os.path.dirname(INVENTORY), "variant-moved-beat.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


def _celery_pids(name):
    """unit -> main PID of beat and of every pool on a host."""
    out = host(name).check_output("systemctl show --property Id,MainPID 'celery-beat.service' 'celery-worker@*.service'")
    units = [dict(line.split("=", 1) for line in block.splitlines()) for block in out.strip().split("\n\n")]
    return {unit["Id"]: unit["MainPID"] for unit in units}


def _beat_events(name, since):
    """Beat's starts, stops and every-minute firings on a host since a unix time
    (an earlier move in the same lab must not count)."""
    out = host(name).check_output(
        "journalctl --no-pager --output short-unix --unit celery-beat.service --since=@%s", str(int(since)))
    events = []
    for line in out.splitlines():
        stamp = float(line.split()[0])
        if "Started celery-beat" in line or "Started Celery beat" in line:
            events.append((stamp, "start"))
        elif "Stopped celery-beat" in line or "Stopped Celery beat" in line:
            events.append((stamp, "stop"))
        elif "Sending due task heartbeat-every-minute" in line:
            events.append((stamp, "minute"))
    return events


def _active(name):
    return host(name).run("systemctl is-active celery-beat.service").stdout.strip() == "active"


def test_move_beat_runbook_never_runs_two_beats_nor_fires_twice():
    """Beat moves to a worker host, which stays a worker: then a Celery
    change restarts its pools and its beat too."""
    new = BEAT_ON_WORKER
    moved = _moved_inventory(new)
    since = time.time()
    minute_start = since // 60 * 60   # an entry sent earlier in this minute must not fire again
    try:
        result = run_playbook("playbooks/runbooks/move-beat.yml", inventory=moved)
        assert result.returncode == 0, result.stdout[-3000:]
        assert _active(new) and not _active(BEAT)
        old, moved_to = _beat_events(BEAT, since), _beat_events(new, since)
        stopped = max(t for t, kind in old if kind == "stop")
        started = min(t for t, kind in moved_to if kind == "start")
        assert stopped <= started, "the new beat started before the old one stopped"
        # Until the new beat fired its once-a-minute entry: a minute the old
        # one fired already and the new one fires again shows up below.
        assert wait_until(lambda: [t for t, kind in _beat_events(new, since) if kind == "minute"], 90, 3), \
            "the new beat never fired its once-a-minute entry"
        minutes = [int(t // 60) for t, kind in _beat_events(BEAT, minute_start) + _beat_events(new, minute_start)
                   if kind == "minute"]
        assert len(minutes) == len(set(minutes)), "an entry fired twice for one period"
        # A setting of the Celery configuration module, which pools and beat read.
        before = _celery_pids(new)
        changed = run_playbook("playbooks/celery.yml", "--limit", new, "--extra-vars",
                               json.dumps({"celery_task_track_started": True}), inventory=moved)
        assert changed.returncode == 0, changed.stdout[-3000:]
        after = _celery_pids(new)
        assert set(before) == set(after) and "celery-beat.service" in before and len(before) > 1, (before, after)
        assert not [unit for unit in before if after[unit] in (before[unit], "0")], (before, after)
    finally:
        os.remove(moved)
        back = run_playbook("playbooks/runbooks/move-beat.yml")
        restored = run_playbook("playbooks/celery.yml", "--limit", new)
    assert back.returncode == 0, back.stdout[-3000:]
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert _active(BEAT) and not _active(new)


# A schedule state file whose entries run a command when unpickled: what a
# broken-into beat host could leave for the next one.
_PLANT = r"""
import os, shelve, sys
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
with shelve.open(sys.argv[1]) as store:
    store["entries"] = Payload()
"""


def test_move_beat_carries_the_state_as_data_never_as_a_pickle():
    """The previous beat host's state file is planted with entries that run
    a command when unpickled. move-beat.yml exports the state on that host
    (as JSON; the planted file fails there, so nothing is carried) and the
    new host writes its own state from data: the command never runs on the
    new host. It runs on the old one (the control: the payload is live), as
    the celery user, where it was planted anyway."""
    marker = f"/var/lib/celery/beat/unpickled-{uuid.uuid4().hex[:8]}"
    host(BEAT).check_output("systemctl stop celery-beat.service")
    host(BEAT).check_output("runuser -u celery -- /opt/celery/venv/bin/python -c %s %s %s", _PLANT,
                            "/var/lib/celery/beat/schedule", marker)
    moved = _moved_inventory()
    try:
        result = run_playbook("playbooks/runbooks/move-beat.yml", inventory=moved)
        assert result.returncode == 0, result.stdout[-3000:]
        assert _active(NEW_BEAT) and not _active(BEAT)
        assert not host(NEW_BEAT).file(marker).exists, "the planted pickle ran on the new beat host"
        assert host(BEAT).file(marker).exists, "the planted payload never ran: the test proves nothing"
        assert host(BEAT).file(marker).user == "celery"
        assert not host(NEW_BEAT).file("/var/lib/celery/beat/carried.json").exists
    finally:
        os.remove(moved)
        back = run_playbook("playbooks/runbooks/move-beat.yml")
        host(BEAT).run("rm -f %s", marker)
    assert back.returncode == 0, back.stdout[-3000:]
    assert _active(BEAT) and not _active(NEW_BEAT)


def test_certificates_runbook_warns_about_certificates_that_expire_soon():
    # Every certificate is valid for months: nothing within the default window...
    quiet = run_playbook("playbooks/runbooks/certificates.yml", "--extra-vars", '{"certificates_fail_on_warning": true}')
    assert quiet.returncode == 0, quiet.stdout[-2000:]
    assert "Certificates expiring soon: 0" in quiet.stdout
    assert "EXPIRES SOON" not in quiet.stdout
    # ...and every one of them within a window of a hundred years.
    loud = run_playbook("playbooks/runbooks/certificates.yml", "--extra-vars", '{"certificates_warn_days": 36500}')
    assert loud.returncode == 0, loud.stdout[-2000:]
    soon = int(re.search(r"Certificates expiring soon: (\d+)", loud.stdout).group(1))
    assert soon >= len(group("celery")) * 2, loud.stdout[-2000:]  # each host's certificate and its store
    assert loud.stdout.count("EXPIRES SOON") == soon, loud.stdout[-2000:]  # each listed on its host, marked
    failing = run_playbook("playbooks/runbooks/certificates.yml", "--extra-vars",
                           '{"certificates_warn_days": 36500, "certificates_fail_on_warning": true}')
    assert failing.returncode != 0
    assert "certificate(s) expire soon" in failing.stdout
