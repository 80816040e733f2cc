"""The Celery upgrade runbook (playbooks/runbooks/upgrade-celery.yml), over
the production path, from the previous Celery minor to the pinned one.

The cluster first goes back to what a deployment of the previous minor
looks like: Celery 5.6.3 and kombu 5.6.2 on every Celery host, deployed by
the bundle's own playbooks from a controller whose Celery is 5.6.3 (a
PYTHONPATH holding those two releases ahead of the controller's venv), and
brokers that permit transient non-exclusive queues (Celery 5.6's rpc://
reply queues are such queues; the bundle kept them permitted for it). Then,
while the operator's web process publishes, the runbook moves everything to
the pinned versions; the brokers' permit is taken back afterwards, as the
upgrade notes say."""
import json
import os
import subprocess
import sys
import time

import test_application as application
import yaml
from clusterlib import PROJECT, celery_cli, group, host, recap_changed, run_playbook, wait_until

WORKER = group("celery_workers")[0]
BEAT = group("celery_beat")[0]
FLOWER = group("flower")[0]
PREVIOUS = {"celery": "5.6.3", "kombu": "5.6.2"}
VENV = "/opt/celery/venv"           # celery_venv
FLOWER_VENV = "/opt/flower/venv"    # flower_venv


def pinned():
    with open(os.path.join(PROJECT, "roles/celery/defaults/main.yml"), encoding="utf-8") as handle:
        defaults = yaml.safe_load(handle)
    return {"celery": defaults["celery_version"], "kombu": defaults["celery_kombu_version"]}


def pool_software():
    """{pool node: its `celery inspect report` text}, every pool answering."""
    result = celery_cli(WORKER, "inspect", "report", "--json", "--timeout", "10")
    assert result.rc == 0, result.stdout + result.stderr
    return {node: reply["ok"] for node, reply in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def runs(report, versions):
    return f"celery:{versions['celery']} " in report and f"kombu:{versions['kombu']} " in report


def started(name, unit):
    """When the unit's main process started (CLOCK_MONOTONIC, µs: one clock
    for every container and the controller)."""
    return int(host(name).check_output("systemctl show --property ExecMainStartTimestampMonotonic --value %s", unit))


def installed(name, venv):
    """The Celery and kombu a host's venv holds."""
    found = host(name).check_output("%s/bin/python -c %s", venv,
                                    "import celery, kombu; print(celery.__version__, kombu.__version__)").split()
    return dict(zip(("celery", "kombu"), found))


def installed_at(name, venv, version):
    """When Celery `version` was installed in the venv (ctime of its RECORD, s)."""
    return int(host(name).check_output("stat -c %%Z %s/lib/python3*/site-packages/celery-%s.dist-info/RECORD",
                                       venv, version))


def started_at(name, unit):
    """When the unit's main process started (s since the epoch)."""
    return int(host(name).check_output(
        "systemctl show --property ExecMainStartTimestamp --timestamp=unix --value %s", unit).lstrip("@"))


def test_the_upgrade_runbook_moves_every_host_from_the_previous_minor_and_loses_no_task(tmp_path):
    """Every task the web process sent during the upgrade runs; each pool
    reports the pinned Celery and kombu at the end; the pools restart after
    the run began, beat after every pool and Flower after beat, each after
    the pinned Celery reached its venv; with the brokers' permit taken
    back, tasks still run."""
    old_controller = str(tmp_path / "celery-previous")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", old_controller,
                    f"celery=={PREVIOUS['celery']}", f"kombu=={PREVIOUS['kombu']}"], check=True, timeout=300)
    previous = {"celery_version": PREVIOUS["celery"], "celery_kombu_version": PREVIOUS["kombu"],
                "rabbitmq_permit_transient_nonexcl_queues": True,
                # The same application: its directory is named after the pinned Celery.
                "celery_app_directory": application.EXAMPLE}
    # The service layers only: the firewall stays as converge left it.
    deployed = run_playbook(["playbooks/services/broker.yml", "playbooks/celery.yml", "playbooks/services/monitoring.yml"],
                            "--extra-vars", json.dumps(previous), env={"PYTHONPATH": old_controller})
    recap_changed(deployed, WORKER)  # the run succeeded
    assert all(runs(report, PREVIOUS) for report in pool_software().values()), pool_software()
    target = pinned()
    assert target != PREVIOUS

    begun = int(time.monotonic() * 1e6)
    token = application.start_publisher()
    try:
        upgrade = run_playbook("playbooks/runbooks/upgrade-celery.yml")
        assert recap_changed(upgrade, WORKER) > 0
    finally:
        sent = application.stop_publisher(token)
    assert len(sent) > 20, "the publisher hardly sent during the upgrade"
    wait_until(lambda: not application.never_ran(sent), 180, interval=3)
    missing = application.never_ran(sent)
    assert not missing, f"{len(missing)} of {len(sent)} tasks sent during the upgrade never ran"

    software = pool_software()
    assert set(software) == {f"feeds@{WORKER}", f"web@{WORKER}"}
    assert all(runs(report, target) for report in software.values()), software
    pools = [started(WORKER, f"celery-worker@{pool}.service") for pool in ("feeds", "web")]
    beat, flower = started(BEAT, "celery-beat.service"), started(FLOWER, "flower.service")
    assert begun < min(pools) and max(pools) < beat < flower, (begun, pools, beat, flower)
    # Each service started after the pinned Celery was installed in its venv
    # (the banner is no witness: Celery prints it to stdout, which the
    # journal gets only when the buffer is flushed, at exit).
    for name, unit, venv in ((WORKER, "celery-worker@feeds.service", VENV), (WORKER, "celery-worker@web.service", VENV),
                             (BEAT, "celery-beat.service", VENV), (FLOWER, "flower.service", FLOWER_VENV)):
        assert installed(name, venv) == target, (name, venv)
        assert started_at(name, unit) >= installed_at(name, venv, target["celery"]), (name, unit)

    # The brokers refuse transient non-exclusive queues again, and tasks run.
    assert recap_changed(run_playbook("playbooks/broker.yml"), group("rabbitmq")[0]) > 0
    assert application.web_process(application.PUBLISHER + """
import json
from demoapp import tasks
print(json.dumps(tasks.add.delay(20, 22).get(timeout=90)))
""") == 42
