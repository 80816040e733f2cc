"""Day-2 runbooks on a cluster of three brokers, each run for real. Runs after
the other files (pytest's order): test_cluster.py needs `media` unconsumed.

- add-workers: a pool added to the inventory consumes its queue and runs its
  tasks; dropped from the inventory again, it is stopped and disabled.
- rotate-credentials: every broker user gets its new password from the vault
  file (users are cluster-wide), the old ones are refused everywhere, the
  Celery services restart with the new ones and tasks flow. It runs last and
  leaves the cluster on the new passwords (rotating back would cost another
  full run in every CI): `molecule converge -s broker_cluster` puts the
  scenario's own secrets back before the suites are run again."""
import json
import secrets as token
import time

import yaml
from clusterlib import amqp_session, celery_python, group, host, inventory_vars, run_playbook, secrets

BROKERS = group("rabbitmq")
PRODUCER = group("celery_beat")[0]
WORKER = group("celery_workers")[0]
ROTATED = {"admin": "vault_rabbitmq_admin_password", "celery_worker": "vault_rabbitmq_worker_password",
           "celery_producer": "vault_rabbitmq_producer_password", "celery_client": "vault_rabbitmq_client_password",
           "celery_monitor": "vault_rabbitmq_monitor_password"}

SEND = """
import json
from celery_cluster import app
print(json.dumps(app.send_task("{task}", args=[7]).get(timeout=60)))
"""


def _send(task, within=90):
    """Send one task from the beat host and return its result; retried while
    services that just restarted come up."""
    deadline = time.monotonic() + within
    while True:
        try:
            return celery_python(PRODUCER, SEND.format(task=task), timeout=80)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(5)


def _unit_state(name, unit):
    return host(name).run("systemctl is-active %s", unit).stdout.strip(), \
        host(name).run("systemctl is-enabled %s", unit).stdout.strip()


def test_add_workers_runbook_starts_a_new_pool_and_a_dropped_one_stops():
    pools = inventory_vars(WORKER)["celery_worker_pools"]
    assert "media" not in [pool["name"] for pool in pools]
    added = pools + [{"name": "media", "queues": ["media"], "concurrency": 1}]
    try:
        result = run_playbook("playbooks/runbooks/add-workers.yml", "-e", json.dumps({"celery_worker_pools": added}))
        assert result.returncode == 0, result.stdout[-4000:]
        assert f"media@{WORKER} consumes media" in result.stdout, result.stdout[-3000:]
        assert _unit_state(WORKER, "celery-worker@media.service") == ("active", "enabled")
        for task in ("video.tasks.transcode", "image.tasks.thumbnail"):
            done = _send(task)
            assert done["worker"] == f"media@{WORKER}" and done["routing_key"] == "media", done
    finally:
        dropped = run_playbook("playbooks/runbooks/add-workers.yml")
        assert dropped.returncode == 0, dropped.stdout[-4000:]
    assert f"feeds@{WORKER} consumes feeds" in dropped.stdout and "media@" not in dropped.stdout, dropped.stdout[-3000:]
    assert _unit_state(WORKER, "celery-worker@media.service") == ("inactive", "disabled")


def _celery_pids(name):
    """{unit: MainPID} of the Celery services running on a host."""
    units = host(name).check_output("systemctl list-units --plain --no-legend --state=running 'celery-*'").split()
    units = [unit for unit in units if unit.startswith("celery-") and unit.endswith(".service")]
    return {unit: host(name).check_output("systemctl show --property MainPID --value %s", unit) for unit in units}


def _accepted(broker, user, secret):
    return amqp_session(WORKER, user, [], broker, secret=secret)


def test_rotate_credentials_runbook_gives_every_broker_user_its_new_password(tmp_path):
    old = secrets()
    new = dict(old, **{key: token.token_hex(24) for key in ROTATED.values()})
    rotated = tmp_path / "rotated-secrets.yml"
    rotated.write_text(yaml.safe_dump(new), encoding="utf-8")
    before = {name: _celery_pids(name) for name in (PRODUCER, WORKER)}
    assert before[PRODUCER] and before[WORKER], before
    result = run_playbook("playbooks/runbooks/rotate-credentials.yml", secrets_file=str(rotated))
    assert result.returncode == 0, result.stdout[-4000:]
    for broker in BROKERS:
        for user, key in ROTATED.items():
            refused = _accepted(broker, user, old[key])
            assert not refused["ok"] and "ACCESS_REFUSED" in refused["error"], (broker, user, refused)
        for user in ("celery_worker", "celery_producer", "celery_client"):
            assert _accepted(broker, user, new[ROTATED[user]])["ok"], (broker, user)
    # Each Celery service runs a new process: it logged in with the new password.
    after = {name: _celery_pids(name) for name in before}
    for name, pids in before.items():
        assert set(after[name]) == set(pids), (name, pids, after[name])
        assert all(after[name][unit] != pid for unit, pid in pids.items()), (name, pids, after[name])
    done = _send("feed.tasks.fetch")
    assert done["worker"] == f"feeds@{WORKER}" and done["routing_key"] == "feeds", done
