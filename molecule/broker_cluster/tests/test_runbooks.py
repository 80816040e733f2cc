"""Day-2 runbooks on a cluster of three brokers, each run for real. Runs after
the other files (pytest's order): test_cluster.py needs `media` unconsumed.

- add-workers: a pool added to the inventory consumes its queue and runs its
  tasks; dropped from the inventory again, it is stopped and disabled.
- backup and restore: a backup is refused without a passphrase and writes
  nothing; with one, the archive holds the definitions, the CA (its key
  encrypted) and beat's state; every broker's data is then wiped, and the
  restore brings back the users (the inventory's and one made by hand),
  a queue and a policy made by hand, and tasks flow again.
- upgrade-rabbitmq: refused before any change while the first broker is
  quorum critical, or for a version two series ahead; then, with a
  producer publishing, the brokers are reinstalled one at a time (Debian
  has one version) and every task published meanwhile runs.
- rotate-credentials: every broker user gets its new password from the vault
  file (users are cluster-wide), the old ones are refused everywhere, the
  Celery services restart with the new ones and tasks flow. It runs last and
  leaves the cluster on the new passwords (rotating back would cost another
  full run in every CI): `molecule converge -s broker_cluster` puts the
  scenario's own secrets back before the suites are run again."""
import json
import os
import pathlib
import re
import secrets as token
import shutil
import subprocess
import tarfile
import time

import yaml
from clusterlib import (CELERY, INVENTORY, PROJECT, amqp_session, broker_pid, celery_python, group, host, inventory_vars,
                        run_playbook, secrets, wait_marks, wait_until)

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


def _rabbitmqctl(broker, *args):
    return host(broker).run("rabbitmqctl --quiet " + " ".join(["%s"] * len(args)), *args)


def _broker_running(broker):
    return host(broker).run("rabbitmq-diagnostics --quiet check_running").rc == 0


def test_backup_refuses_to_write_key_material_without_a_passphrase(tmp_path):
    backups = tmp_path / "backups"
    result = run_playbook("playbooks/runbooks/backup.yml",
                          "-e", json.dumps({"backup_dir": str(backups), "backup_passphrase": ""}))
    assert result.returncode != 0
    assert "backup_passphrase (vault_backup_passphrase" in " ".join(result.stdout.split()), result.stdout[-3000:]
    assert not backups.exists(), list(backups.iterdir())


def test_restore_rebuilds_wiped_brokers_from_a_backup(tmp_path):
    seed = BROKERS[0]
    backups = tmp_path / "backups"
    # What only the backup knows: a user, a queue and a policy made by hand.
    reporting = token.token_hex(16)
    assert _rabbitmqctl(seed, "add_user", "reporting", reporting).rc == 0
    assert _rabbitmqctl(seed, "set_permissions", "-p", "celery", "reporting", "^$", "^$", "^restore-canary$").rc == 0
    assert _rabbitmqctl(seed, "set_policy", "-p", "celery", "--apply-to", "queues", "restore-canary-ttl",
                        "^restore-canary$", '{"message-ttl": 600000}').rc == 0
    assert amqp_session(WORKER, "celery_worker", [["declare", "restore-canary"]], seed)["ok"]

    result = run_playbook("playbooks/runbooks/backup.yml", "-e", json.dumps({"backup_dir": str(backups)}))
    assert result.returncode == 0, result.stdout[-4000:]
    archives = list(backups.glob("celery-cluster-*.tar.gz"))
    assert len(archives) == 1 and archives[0].stat().st_mode & 0o777 == 0o600, archives
    with tarfile.open(archives[0]) as archive:
        members = {member.name.lstrip("./"): archive.extractfile(member).read().decode()
                   for member in archive.getmembers() if member.isfile()}
    assert set(members) == {"definitions.json", "ca.crt", "ca.key.enc", "beat-schedule.json"}, set(members)
    assert members["ca.key.enc"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert not any("BEGIN PRIVATE KEY" in text or "BEGIN RSA PRIVATE KEY" in text for text in members.values())
    definitions = json.loads(members["definitions.json"])
    assert {"reporting", "celery_worker", "celery_producer"} <= {user["name"] for user in definitions["users"]}
    assert all("password" not in user for user in definitions["users"])
    assert json.loads(members["beat-schedule.json"]), members["beat-schedule.json"]

    # Every broker loses its data: stopped, its database removed, started empty.
    for broker in BROKERS:
        host(broker).check_output("systemctl stop rabbitmq-server")
    for broker in BROKERS:
        host(broker).check_output("rm -rf /var/lib/rabbitmq/mnesia")
    for broker in BROKERS:
        host(broker).check_output("systemctl start --no-block rabbitmq-server")
    assert wait_until(lambda: all(_broker_running(broker) for broker in BROKERS), 300, 5)
    users = _rabbitmqctl(seed, "list_users").stdout
    assert "reporting" not in users and "celery_worker" not in users, users

    # A controller holding another CA is refused before any change.
    pki = pathlib.Path(INVENTORY).parent / ".pki"
    ca_cert = (pki / "ca.crt").read_text()
    host(seed).check_output("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=other -days 1 "
                            "-keyout /tmp/other.key -out /tmp/other.crt 2>/dev/null")
    pki.rename(tmp_path / "saved-pki")
    try:
        pki.mkdir()
        (pki / "ca.crt").write_text(host(seed).check_output("cat /tmp/other.crt") + "\n")
        refused = run_playbook("playbooks/runbooks/restore.yml", "-e", f"restore_archive={archives[0]}")
        assert refused.returncode != 0 and "is not the CA of" in " ".join(refused.stdout.split()), refused.stdout[-3000:]
        # It stopped in its first play: no broker play ran, no CA file was written.
        plays = re.findall(r"^PLAY \[(.*?)\]", refused.stdout, re.MULTILINE)
        assert plays == ["Unpack the backup and put the internal CA back if the controller lost it"], plays
        assert sorted(path.name for path in pki.iterdir()) == ["ca.crt"]
        assert "celery_worker" not in _rabbitmqctl(seed, "list_users").stdout
        # A controller that lost its CA gets the backup's back.
        shutil.rmtree(pki)
        result = run_playbook("playbooks/runbooks/restore.yml", "-e", f"restore_archive={archives[0]}")
        assert result.returncode == 0, result.stdout[-4000:]
        assert (pki / "ca.crt").read_text() == ca_cert
        assert (pki / "ca.key").stat().st_mode & 0o777 == 0o600
        # The restored key is the certificate's (decrypted from the archive).
        public = [subprocess.run(command, capture_output=True, text=True, check=True).stdout for command in (
            ["openssl", "pkey", "-in", str(pki / "ca.key"), "-pubout"],
            ["openssl", "x509", "-in", str(pki / "ca.crt"), "-noout", "-pubkey"])]
        assert public[0] and public[0] == public[1]
    finally:
        if not (pki / "ca.key").exists():
            shutil.rmtree(pki, ignore_errors=True)
            (tmp_path / "saved-pki").rename(pki)
        host(seed).run("rm -f /tmp/other.key /tmp/other.crt")
    # The same users (the inventory's with the vault's passwords, the
    # others with their backed-up hashes), queues and policies, on every broker.
    for broker in BROKERS:
        assert _accepted(broker, "reporting", reporting)["ok"], broker
        for user, key in ROTATED.items():
            if user != "admin":
                assert _accepted(broker, user, secrets()[key])["ok"], (broker, user)
    assert "restore-canary-ttl" in _rabbitmqctl(seed, "list_policies", "-p", "celery").stdout
    assert amqp_session(WORKER, "celery_worker", [["publish", "restore-canary", 1, "canary"],
                                                  ["get", "restore-canary", 1]], seed)["result"] == [["canary-0"]]
    # Tasks flow again.
    done = _send("feed.tasks.fetch")
    assert done["worker"] == f"feeds@{WORKER}" and done["routing_key"] == "feeds", done
    _rabbitmqctl(seed, "delete_user", "reporting")
    _rabbitmqctl(seed, "clear_policy", "-p", "celery", "restore-canary-ttl")
    amqp_session(WORKER, "celery_worker", [["delete", "restore-canary"]], seed)


def _installed(broker):
    return host(broker).check_output("dpkg-query --show --showformat '${Version}' rabbitmq-server")


def _maintenance():
    status = json.loads(_rabbitmqctl(BROKERS[0], "cluster_status", "--formatter", "json").stdout)
    return status["maintenance_status"]


def test_upgrade_rabbitmq_runbook_stops_before_a_quorum_critical_node():
    # A quorum queue with one member, on the first broker: without that node
    # it has no majority, so the first node of the upgrade is quorum critical.
    seed, queue = BROKERS[0], "upgrade-critical"
    declared = amqp_session(WORKER, "celery_worker", [["declare", queue, {
        "x-queue-type": "quorum", "x-quorum-initial-group-size": 1}]], seed)
    assert declared["ok"], declared
    try:
        members = host(seed).check_output("rabbitmq-queues --quiet quorum_status %s --vhost celery", queue)
        assert f"rabbit@{seed}" in members and not any(f"rabbit@{b}" in members for b in BROKERS[1:]), members
        version, pids = _installed(seed), {b: broker_pid(b) for b in BROKERS}
        refused = run_playbook("playbooks/runbooks/upgrade-rabbitmq.yml", "-e", f"runbook_rabbitmq_version={version}",
                               "-e", "runbook_restart_current=true")
        assert refused.returncode != 0, refused.stdout[-3000:]
        assert f"{seed} is quorum critical" in refused.stdout and queue in refused.stdout, refused.stdout[-3000:]
        # Nothing changed on any broker: same processes, none in maintenance.
        assert {b: broker_pid(b) for b in BROKERS} == pids
        assert set(_maintenance().values()) == {"not under maintenance"}, _maintenance()
        # A version jump RabbitMQ does not support (4.0 to 4.2) is refused before any change.
        skipped = run_playbook("playbooks/runbooks/upgrade-rabbitmq.yml", "-e", "runbook_rabbitmq_version=4.2.0-1")
        assert skipped.returncode != 0 and "one release series at a time" in skipped.stdout, skipped.stdout[-3000:]
        assert {b: broker_pid(b) for b in BROKERS} == pids
    finally:
        amqp_session(WORKER, "celery_worker", [["delete", queue]], seed)


def test_upgrade_rabbitmq_runbook_goes_one_broker_at_a_time_and_loses_no_task():
    # Debian has one RabbitMQ, so the "upgrade" reinstalls it: the order, the
    # drain and the checks are what is tested.
    version, pids = _installed(BROKERS[0]), {b: broker_pid(b) for b in BROKERS}
    since = int(time.time())   # the containers share this machine's clock
    # A producer publishes for as long as the runbook runs (4 tasks/s, each
    # leaving a mark where it ran); every task must run.
    producer = host(PRODUCER)
    producer.check_output("rm -f /tmp/upgrade.tokens /tmp/upgrade.stop")
    producer.check_output("(timeout 900 " + CELERY + " python -c %s > /tmp/upgrade.log 2>&1 &)", PUBLISH_UNTIL_STOP)
    runbook = subprocess.Popen(
        ["ansible-playbook", "-i", INVENTORY, f"--extra-vars=@{os.environ['CLUSTER_SECRETS']}",
         f"--extra-vars={os.environ.get('CLUSTER_EXTRA_VARS', '{}')}",
         os.path.join(PROJECT, "playbooks/runbooks/upgrade-rabbitmq.yml"),
         "-e", f"runbook_rabbitmq_version={version}", "-e", "runbook_restart_current=true"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, "ansible.cfg"), ANSIBLE_FORCE_COLOR="0"))
    try:
        stdout, _ = runbook.communicate(timeout=900)
    finally:
        producer.check_output("touch /tmp/upgrade.stop")
    assert runbook.returncode == 0, stdout[-4000:]
    assert wait_until(lambda: producer.run("pgrep -f '[u]pgrade.tokens'").rc != 0, 60)
    assert "Traceback" not in producer.check_output("cat /tmp/upgrade.log"), producer.check_output("cat /tmp/upgrade.log")
    tokens = producer.check_output("cat /tmp/upgrade.tokens").split()
    assert len(tokens) >= 100, f"only {len(tokens)} tasks published while the runbook ran"
    missing = wait_marks(tokens, 180)
    assert not missing, f"{len(missing)} of {len(tokens)} tasks published during the upgrade never ran"
    # One broker at a time, in inventory order, each with a new process...
    order = re.findall(r"Upgrade: (\S+) drained, upgraded and revived: rabbitmq-server ([^'\s]+)", stdout)
    assert order == [(b, version) for b in BROKERS], order
    for broker in BROKERS:
        assert broker_pid(broker) != pids[broker], broker
    for before, after in zip(BROKERS, BROKERS[1:]):
        started = _journal_times(before, "Started ", since)
        stopping = _journal_times(after, "Stopping ", since)
        assert started and stopping and max(started) < min(stopping), (before, after)
    # ...and the cluster whole again: three members, none in maintenance, no stable flag left off.
    assert set(_maintenance().values()) == {"not under maintenance"}, _maintenance()
    flags = json.loads(_rabbitmqctl(BROKERS[0], "list_feature_flags", "name", "state", "stability",
                                    "--formatter", "json").stdout)
    assert [f["name"] for f in flags if f["stability"] == "stable" and f["state"] != "enabled"] == []


# A producer on the beat host: a task every 0.25 s until /tmp/upgrade.stop
# exists, each token written once send_task returned (the broker confirmed it).
PUBLISH_UNTIL_STOP = (
    "import os, time, uuid\nfrom celery_cluster import app\n"
    "out = open('/tmp/upgrade.tokens', 'a', buffering=1)\n"
    "while not os.path.exists('/tmp/upgrade.stop'):\n"
    "    t = uuid.uuid4().hex\n"
    "    app.send_task('web.tasks.mark', [t], ignore_result=True)\n"
    "    out.write(t + '\\n'); time.sleep(0.25)\n")


def _journal_times(broker, marker, since):
    """Times of rabbitmq-server's journal lines with `marker` since a unix time."""
    out = host(broker).check_output(
        "journalctl --no-pager --output short-unix --unit rabbitmq-server --since=@%s", str(since))
    return [float(line.split()[0]) for line in out.splitlines() if marker in line]


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
