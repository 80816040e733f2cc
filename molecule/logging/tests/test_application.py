"""Your application, not ours: this scenario runs Celery's own Django example
(examples/django of the pinned Celery's sdist), which prepare.yml downloads
on the controller and nobody edits, deployed from its directory
(group_vars/all/celery.yml). Its settings name a guest broker, json and a
database result backend; the cluster's broker, TLS, signing and routing win.

The log server shows which pool ran a task: each pool logs under its own
program name (celery-worker-feeds, celery-worker-web), and Celery logs
"Task NAME[ID] succeeded in ...: RESULT" for each."""
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import uuid

import pytest
import yaml
from clusterlib import (PROJECT, celery_cli, group, host, http_get, inventory_vars, recap_changed, remote_log, run_playbook,
                        secrets, wait_for_remote_log, wait_until)

WORKER = group("celery_workers")[0]
BEAT = group("celery_beat")[0]
FLOWER = group("flower")[0]
RELEASES = "/opt/celery/app"          # celery_app_releases_dir
VENV_PYTHON = "/opt/celery/venv/bin/python"
ROUTES = {"add": "feeds", "mul": "feeds", "xsum": "feeds", "count_widgets": "web"}  # group_vars/all/celery.yml


def celery_version():
    with open(os.path.join(PROJECT, "roles/celery/defaults/main.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["celery_version"]


EXAMPLES = os.path.expanduser("~/.cache/celery-cluster/examples")
SDIST = os.path.join(EXAMPLES, f"celery-{celery_version()}.tar.gz")
EXAMPLE = os.path.join(EXAMPLES, f"celery-{celery_version()}", "examples", "django")


def tree(path):
    """{relative name: sha256} of every file under path."""
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                found[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def web_process(code, timeout=120):
    """Run `code` on the beat host the way a web server of the operator's
    runs: a process the bundle does not manage (a transient systemd unit), as
    www-data in group celery, with the environment the bundle writes for
    publishers. Returns the last line of its output parsed as JSON."""
    result = host(BEAT).run(
        "timeout %s systemd-run --quiet --wait --pipe --collect --uid=www-data --property=SupplementaryGroups=celery"
        " --property=EnvironmentFile=/etc/celery/publisher.env --property=WorkingDirectory=/tmp %s -c %s",
        str(timeout), VENV_PYTHON, code)
    assert result.rc == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# What an operator's wsgi.py does, plus the bundle's one line.
PUBLISHER = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
import celery_cluster  # the one line a publisher adds (README: Deploy your application)
from proj.wsgi import application  # the Django project, as a WSGI server loads it
"""


def succeeded_in(pool, name, task_id):
    return f"Task demoapp.tasks.{name}[{task_id}] succeeded" in remote_log(WORKER, f"celery-worker-{pool}")


@pytest.fixture(scope="module")
def widgets():
    """A database for the ORM tasks, where the example's settings put it
    (db.sqlite3 beside manage.py, in the current release), migrated and
    holding three widgets; made by root, readable by the pools."""
    out = host(WORKER).check_output(
        "cd /tmp && env DJANGO_SETTINGS_MODULE=proj.settings %s -c %s", VENV_PYTHON,
        "import django, json; django.setup(); from django.conf import settings; "
        "from django.core.management import call_command; call_command('migrate', verbosity=0); "
        "from demoapp.models import Widget; Widget.objects.all().delete(); "
        "[Widget.objects.create(name=f'w{i}') for i in range(3)]; "
        "print(json.dumps(settings.DATABASES['default']['NAME']))")
    return json.loads(out.splitlines()[-1])


def test_the_example_is_deployed_as_it_ships():
    """The directory the hosts run is the sdist's examples/django, byte for
    byte: nothing was edited on the controller (nor a __pycache__ left by the
    preflight's import check) or on the hosts."""
    with tarfile.open(SDIST) as sdist:
        prefix = f"celery-{celery_version()}/examples/django/"
        shipped = {member.name[len(prefix):]: hashlib.sha256(sdist.extractfile(member).read()).hexdigest()
                   for member in sdist.getmembers() if member.isfile() and member.name.startswith(prefix)}
    assert shipped and tree(EXAMPLE) == shipped
    release = host(WORKER).check_output("readlink -f %s/current", RELEASES)
    deployed = host(WORKER).check_output(
        "cd %s && find . -type f ! -name .celery-release ! -name db.sqlite3 -print0 | sort -z | xargs -0 sha256sum",
        release)
    assert {line.split(None, 1)[1][2:]: line.split()[0] for line in deployed.splitlines()} == shipped


def test_the_clusters_settings_win_over_the_django_settings():
    """proj/settings.py says guest broker, json, a database backend; the
    pools run with the cluster's TLS broker, auth signing and rpc://."""
    out = host(WORKER).check_output(
        "runuser -u celery -- env PYTHONPATH=/etc/celery CELERY_CONFIG_MODULE=celeryconfig %s -c %s", VENV_PYTHON,
        "import json, celery_cluster as c; conf = c.app.conf; "
        "print(json.dumps([c.app.main, conf.broker_url.split('@')[-1], conf.task_serializer, conf.accept_content, "
        "conf.result_backend, bool(conf.broker_use_ssl), conf.CELERY_BROKER_URL.split('@')[-1]]))")
    main, broker, serializer, accept, backend, tls, namespaced = json.loads(out.splitlines()[-1])
    assert main == "proj"
    assert broker.endswith(":5671/celery") and namespaced == broker
    assert (serializer, accept, backend, tls) == ("auth", ["auth"], "rpc://", True)


def test_a_web_process_publishes_and_each_task_runs_on_the_pool_its_route_names(widgets):
    """A publisher the bundle does not run sends the example's tasks (signed:
    the pools accept `auth` only); each runs on the pool its routing rule
    names, the ORM task reads the database, results come back over rpc://."""
    results = web_process(PUBLISHER + """
import json
from demoapp import tasks
sent = {"add": tasks.add.delay(2, 3), "mul": tasks.mul.delay(6, 7), "xsum": tasks.xsum.delay([1, 2, 3]),
        "count_widgets": tasks.count_widgets.delay()}
print(json.dumps({name: [result.id, result.get(timeout=90)] for name, result in sent.items()}))
""")
    assert {name: value for name, (_, value) in results.items()} == {"add": 5, "mul": 42, "xsum": 6, "count_widgets": 3}
    for name, (task_id, _) in results.items():
        pool = ROUTES[name]
        text = wait_for_remote_log(WORKER, f"celery-worker-{pool}", f"demoapp.tasks.{name}[{task_id}] succeeded")
        assert f"demoapp.tasks.{name}[{task_id}] succeeded" in text, f"{name} did not run on {pool}"
        other = next(p for p in set(ROUTES.values()) if p != pool)
        assert not succeeded_in(other, name, task_id)


def test_beat_fires_the_inventorys_entry_for_an_example_task():
    """celery_beat_schedule names demoapp.tasks.add(19, 23) every 10 s: beat
    sends it and the feeds pool returns 42."""
    sent = wait_for_remote_log(BEAT, "celery-beat", "Sending due task django-add-every-10s (demoapp.tasks.add)")
    assert "Sending due task django-add-every-10s (demoapp.tasks.add)" in sent
    answer = re.compile(r"Task demoapp\.tasks\.add\[[0-9a-f-]+\] succeeded in [0-9.e-]+s: 42$", re.M)
    ran = wait_until(lambda: remote_log(WORKER, "celery-worker-feeds"), 90, done=answer.search)
    assert answer.search(ran), ran[-2000:]


def flower_api(path):
    """GET Flower's API from the controller (the admin address), over HTTPS
    verified against the cluster CA, with the vault's password."""
    with tempfile.NamedTemporaryFile("w", suffix=".crt") as ca:
        ca.write(host(FLOWER).file("/etc/celery-cluster/pki/ca.crt").content_string)
        ca.flush()
        status, body = http_get(f"https://{inventory_vars(FLOWER)['ansible_host']}:5555{path}",
                                auth=(inventory_vars(FLOWER).get("flower_auth_user", "admin"), secrets()["vault_flower_password"]), cafile=ca.name)
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


def test_flower_shows_the_example_tasks_and_pools():
    """Flower imports the same app (its own venv, the release on its path
    too) and decodes the signed events: each task is there by name, with its
    result and the pool that ran it."""
    sent = web_process(PUBLISHER + """
import json
from demoapp import tasks
sent = [tasks.add.delay(1, 1), tasks.xsum.delay([4, 5])]
print(json.dumps([[result.id, result.get(timeout=90)] for result in sent]))
""")
    seen = wait_until(lambda: {task_id: flower_api(f"/api/task/info/{task_id}") if task_id in flower_api("/api/tasks") else None
                               for task_id, _ in sent},
                      60, done=lambda found: all(info and info.get("state") == "SUCCESS" for info in found.values()))
    assert [(seen[task_id] or {}).get("name") for task_id, _ in sent] == ["demoapp.tasks.add", "demoapp.tasks.xsum"], seen
    assert all(seen[task_id]["state"] == "SUCCESS" and seen[task_id]["worker"] == f"feeds@{WORKER}" for task_id, _ in sent)
    assert set(flower_api("/api/workers?refresh=1")) == {f"feeds@{WORKER}", f"web@{WORKER}"}


def registered():
    """Task names every pool of the worker host has registered."""
    result = celery_cli(WORKER, "inspect", "registered", "--json", "--timeout", "10")
    assert result.rc == 0, result.stdout + result.stderr
    return {name for names in json.loads(result.stdout.strip().splitlines()[-1]).values() for name in names}


def release_of_v2(workdir):
    """The operator's next version, as their CI would publish it: the example
    plus one new task, with a pyproject of their own beside the copied code,
    as an sdist (the role builds it into a wheel on the controller)."""
    name = "proj-example-2.0"
    source = os.path.join(workdir, name)
    shutil.copytree(EXAMPLE, source)
    with open(os.path.join(source, "demoapp", "tasks.py"), "a", encoding="utf-8") as handle:
        handle.write("\n\n@shared_task\ndef release():\n    return 'v2'\n")
    with open(os.path.join(source, "pyproject.toml"), "w", encoding="utf-8") as handle:
        handle.write('[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
                     '[project]\nname = "proj-example"\nversion = "2.0"\n'
                     '[tool.setuptools]\npackages = ["proj", "demoapp", "demoapp.migrations"]\n')
    sdist = os.path.join(workdir, f"{name}.tar.gz")
    with tarfile.open(sdist, "w:gz") as archive:
        archive.add(source, arcname=name)
    return sdist


def pool_pids():
    return host(WORKER).check_output(
        "systemctl show --property MainPID --value celery-worker@feeds.service celery-worker@web.service").split()


def start_publisher():
    """A web process of the operator's on the beat host that sends
    add(i, 0) every 0.2 s until stop_publisher(); returns its token."""
    token = uuid.uuid4().hex[:8]
    host(BEAT).check_output("rm -f /tmp/stop-%s /tmp/sent-%s", token, token)
    host(BEAT).check_output(
        "systemd-run --quiet --unit publisher-%s --uid=www-data --property=SupplementaryGroups=celery"
        " --property=EnvironmentFile=/etc/celery/publisher.env --property=WorkingDirectory=/tmp %s -c %s",
        token, VENV_PYTHON, PUBLISHER + f"""
import os, time
from demoapp import tasks
count = 0
with open("/tmp/sent-{token}", "a") as sent:
    while not os.path.exists("/tmp/stop-{token}"):
        count += 1
        sent.write(tasks.add.delay(count, 0).id + "\\n")
        sent.flush()
        time.sleep(0.2)
""")
    return token


def stop_publisher(token):
    """Stop the publisher; returns the ids of the tasks it sent."""
    host(BEAT).check_output("touch /tmp/stop-%s", token)
    return host(BEAT).check_output("cat /tmp/sent-%s", token).split()


def never_ran(sent):
    """The ids among `sent` that the feeds pool has not logged as succeeded
    (the server's file read once)."""
    ran = set(re.findall(r"Task demoapp\.tasks\.add\[([0-9a-f-]+)\] succeeded", remote_log(WORKER, "celery-worker-feeds")))
    return [task_id for task_id in sent if task_id not in ran]


def test_a_new_version_reaches_the_pools_warm_and_the_old_one_rolls_back(tmp_path, widgets):
    """Version 2 of the app (an sdist, celery_app_source: package) replaces
    the directory release in one celery.yml run while a publisher sends
    tasks: every task sent meanwhile runs, the pools restart and register v2's
    new task, and the v1 release stays on the host. Going back to the
    directory (the rollback) switches to the kept release without unpacking
    it again, removes v2's package, and v1's tasks run."""
    v1 = host(WORKER).check_output("readlink -f %s/current", RELEASES)
    unpacked = host(WORKER).check_output("stat -c %%Y %s/.celery-release", v1)
    sdist = release_of_v2(str(tmp_path))
    before = pool_pids()
    token = start_publisher()
    try:
        update = run_playbook("playbooks/celery.yml", "--extra-vars",
                              json.dumps({"celery_app_source": "package", "celery_app_package": sdist}))
        assert recap_changed(update, WORKER) > 0
    finally:
        sent = stop_publisher(token)
    assert len(sent) > 20, "the publisher hardly sent during the update"
    wait_until(lambda: not never_ran(sent), 180, interval=3)
    missing = never_ran(sent)
    assert not missing, f"{len(missing)} of {len(sent)} tasks sent during the update never ran"
    after = pool_pids()
    assert all(old != new for old, new in zip(before, after)), (before, after)
    assert "demoapp.tasks.release" in registered()
    assert host(WORKER).file(f"{RELEASES}/packages/proj_example-2.0-py3-none-any.whl").exists
    assert host(WORKER).file(f"{v1}/.celery-release").exists, "the v1 release was not kept"

    rollback = run_playbook("playbooks/celery.yml")
    assert recap_changed(rollback, WORKER) > 0
    assert host(WORKER).check_output("readlink -f %s/current", RELEASES) == v1
    assert host(WORKER).check_output("stat -c %%Y %s/.celery-release", v1) == unpacked
    assert host(WORKER).run("%s -m pip show proj-example", VENV_PYTHON).rc != 0
    names = registered()
    assert "demoapp.tasks.release" not in names and "demoapp.tasks.add" in names
    assert web_process(PUBLISHER + """
import json
from demoapp import tasks
print(json.dumps(tasks.count_widgets.delay().get(timeout=90)))
""") == 3
    assert recap_changed(run_playbook("playbooks/celery.yml"), WORKER) == 0
