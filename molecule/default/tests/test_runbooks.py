"""Day-2 runbooks, run for real against the whole cluster."""
import os
import re
import time
import uuid

import yaml
from clusterlib import INVENTORY, amqp_session, group, host, run_playbook

BROKER = group("rabbitmq")[0]
WORKER = group("celery_workers")[0]
BEAT = group("celery_beat")[0]
NEW_BEAT = group("celery_clients")[0]


def test_status_runbook_reports_queues_workers_and_beat():
    queue = f"status-{uuid.uuid4().hex[:8]}"
    assert amqp_session(WORKER, "celery_worker", [["declare", queue], ["publish", queue, 4, "s"]], BROKER)["ok"]
    try:
        for _ in range(6):   # RabbitMQ refreshes queue statistics every 5 s
            result = run_playbook("playbooks/runbooks/status.yml")
            assert result.returncode == 0, result.stdout[-3000:]
            if f"{queue} 4 4 0" in result.stdout:
                break
            time.sleep(3)
        assert f"{queue} 4 4 0" in result.stdout, result.stdout[-3000:]
        for worker in group("celery_workers"):
            assert re.search(rf"@{worker}: ", result.stdout), worker
        assert f"Beat runs on: {BEAT}" in result.stdout
    finally:
        amqp_session(WORKER, "celery_worker", [["delete", queue]], BROKER)


def _moved_inventory():
    with open(INVENTORY, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    data["celery_beat"]["hosts"] = {NEW_BEAT: data["celery_clients"]["hosts"].pop(NEW_BEAT)}
    # The old beat host leaves the Celery groups but stays in the inventory.
    data["celery"]["hosts"].pop(BEAT)
    path = os.path.join(os.path.dirname(INVENTORY), "variant-moved-beat.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


def _beat_events(name):
    out = host(name).check_output(
        "journalctl --no-pager --output short-unix --unit celery-beat.service --since=-15min")
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
    moved = _moved_inventory()
    try:
        result = run_playbook("playbooks/runbooks/move-beat.yml", inventory=moved)
        assert result.returncode == 0, result.stdout[-3000:]
        assert _active(NEW_BEAT) and not _active(BEAT)
        old, new = _beat_events(BEAT), _beat_events(NEW_BEAT)
        stopped = max(t for t, kind in old if kind == "stop")
        started = min(t for t, kind in new if kind == "start")
        assert stopped <= started, "the new beat started before the old one stopped"
        time.sleep(65)   # let the new beat reach its next minute
        minutes = [int(t // 60) for t, kind in _beat_events(BEAT) + _beat_events(NEW_BEAT) if kind == "minute"]
        assert len(minutes) == len(set(minutes)), "an entry fired twice for one period"
    finally:
        os.remove(moved)
        back = run_playbook("playbooks/runbooks/move-beat.yml")
    assert back.returncode == 0, back.stdout[-3000:]
    assert _active(BEAT) and not _active(NEW_BEAT)
