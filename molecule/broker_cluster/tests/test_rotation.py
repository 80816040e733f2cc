"""The rotate-credentials runbook on a cluster of three brokers: every broker
user gets its new password from the vault file (users are cluster-wide),
the old ones are refused everywhere, the Celery services restart with the new
ones and tasks flow. Runs after the other files (pytest's order) and rotates
back to the scenario's own secrets at the end, so the scenario stays usable."""
import secrets as token
import time

import yaml
from clusterlib import amqp_session, celery_python, group, host, run_playbook, secrets

BROKERS = group("rabbitmq")
PRODUCER = group("celery_beat")[0]
WORKER = group("celery_workers")[0]
ROTATED = {"admin": "vault_rabbitmq_admin_password", "celery_worker": "vault_rabbitmq_worker_password",
           "celery_producer": "vault_rabbitmq_producer_password", "celery_client": "vault_rabbitmq_client_password",
           "celery_monitor": "vault_rabbitmq_monitor_password"}

SEND = """
import json
from celery_example.app import app
print(json.dumps(app.send_task("feed.tasks.fetch", args=[7]).get(timeout=60)))
"""


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
    try:
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
        deadline = time.monotonic() + 90
        while True:
            try:
                done = celery_python(PRODUCER, SEND, timeout=80)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(5)
        assert done["worker"] == f"feeds@{WORKER}" and done["routing_key"] == "feeds", done
    finally:
        back = run_playbook("playbooks/runbooks/rotate-credentials.yml")
        assert back.returncode == 0, back.stdout[-4000:]
    assert _accepted(BROKERS[0], "celery_worker", old[ROTATED["celery_worker"]])["ok"]
