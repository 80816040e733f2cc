"""The entry module (roles/celery/templates/celery_cluster.py.j2) with real,
unmodified applications: Celery's own Django example (from the celery 5.6.3
sdist), small apps that hard-code another broker, backend and serializers,
and the bundle's example app. Whatever those set, in Celery(...), in
app.conf.update(), in their configuration module, in Django settings or in
the environment, the app that `celery --app celery_cluster` runs has the
cluster's configuration and signs with the cluster's key.

Each case runs in its own Python process, as a service would: PYTHONPATH
holds the rendered entry module and configuration (/etc/celery on a host).
The sdist is downloaded once into .cache/ (git-ignored); nothing of it is
ever changed (the tree is made read-only).
"""
import datetime
import hashlib
import importlib.util
import json
import os
import pathlib
import stat
import subprocess
import sys
import tarfile
import textwrap

import jinja2
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "celery-sdist"
SDIST = "celery-5.6.3.tar.gz"
SDIST_SHA256 = "177006bd2054b882e9f01be59abd8529e88879ef50d7918a7050c5a9f4e12912"
EXAMPLE_APP = ROOT / "roles/celery/files/example_app"
BROKERS = ["amqps://worker:s3cret-pass@broker1:5671/celery", "amqps://worker:s3cret-pass@broker2:5671/celery"]
DEMO_TASKS = {"add", "mul", "xsum", "count_widgets", "rename_widget"}


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config_tests = _load("entry_celery_config_tests", ROOT / "tests/unit/test_celery_config.py")
filters = config_tests.filters
checker = _load("check_app_module", ROOT / "roles/celery/files/check_app_module.py")


def render_entry(app_module):
    """The entry module as the celery role's template task renders it."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["comment"] = lambda text: "#\n# " + text + "\n#"
    env.filters["to_json"] = json.dumps
    template = env.from_string((ROOT / "roles/celery/templates/celery_cluster.py.j2").read_text())
    return template.render(ansible_managed="Ansible managed", celery_app_module=app_module)


@pytest.fixture(scope="session")
def django_example(tmp_path_factory):
    """examples/django of the celery 5.6.3 sdist, read-only."""
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / SDIST
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "celery==5.6.3", "--dest", str(CACHE)], check=True, timeout=300)
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == SDIST_SHA256
    target = tmp_path_factory.mktemp("sdist")
    prefix = "celery-5.6.3/examples/django/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(target, members=members, filter="data")
    tree = target / prefix
    for path in sorted(tree.rglob("*"), reverse=True) + [tree]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return tree


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A host's /etc/celery: key, certificate, signer store, celeryconfig and beatconfig."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    etc = tmp_path_factory.mktemp("etc-celery")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "worker1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (etc / "celery.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (etc / "celery.crt").write_bytes(pem)
    (etc / "signers").mkdir()
    (etc / "signers" / "worker1@0123456789abcdef.pem").write_bytes(pem)
    values = config_tests.settings(celery_security_key=str(etc / "celery.key"),
                                   celery_security_certificate=str(etc / "celery.crt"),
                                   celery_security_cert_store=str(etc / "signers/*.pem"),
                                   celery_broker_tls_server_name="broker.cluster.internal")
    assert filters.celery_config_problems(values) == []
    ssl_options = {"ca_certs": "/etc/celery-cluster/pki/ca.crt", "cert_reqs": "required",
                   "server_hostname": "broker.cluster.internal",
                   "certfile": str(etc / "celery.crt"), "keyfile": str(etc / "celery.key")}
    (etc / "celeryconfig.py").write_text(filters.celery_python_config(values, BROKERS, ssl_options, {}))
    # As roles/celery_beat/templates/beatconfig.py.j2 renders it.
    (etc / "beatconfig.py").write_text("from celeryconfig import *  # noqa\n\nbeat_sync_every = 1\n\n"
                                       + filters.celery_beat_config(values["celery_beat_schedule"]))
    return etc


# What a service's process sees after `celery --app celery_cluster`: the
# worker's own start (import_default_modules runs Django's setup, then the
# app is finalized and autodiscovers), then every setting that matters.
PROBE = textwrap.dedent("""
    import json, os, ssl, sys
    from kombu.serialization import dumps, loads, registry
    import celery_cluster
    app = celery_cluster.app
    for step in sys.argv[1:]:
        exec(step)
    app.loader.import_default_modules()
    app.finalize(auto=True)
    conf = app.conf
    write = app.connection_for_write()
    content_type, encoding, data = dumps({"signed": True}, serializer="auth")
    print(json.dumps({
        "main": app.main,
        "namespace": app.namespace,
        "broker_url": conf.broker_url,
        "read_url": conf.broker_read_url,
        "write_url": conf.broker_write_url,
        "connection": [write.hostname, write.port, write.userid, write.virtual_host, write.transport_cls],
        "broker_use_ssl": {k: (int(v) if k == "cert_reqs" else v) for k, v in conf.broker_use_ssl.items()},
        "result_backend": conf.result_backend,
        "backend_class": type(app.backend).__name__,
        "task_serializer": conf.task_serializer,
        "accept_content": conf.accept_content,
        "result_serializer": conf.result_serializer,
        "result_accept_content": conf.result_accept_content,
        "event_serializer": conf.event_serializer,
        "security": [conf.security_key, conf.security_certificate, conf.security_cert_store, conf.security_digest],
        "security_key_password": conf.security_key_password,
        "queues": sorted(app.amqp.queues),
        "exchange": [conf.task_default_exchange, conf.task_default_exchange_type],
        "routes": {name: app.amqp.router.route({}, name)["queue"].name
                   for name in ("feed.tasks.fetch", "video.tasks.transcode", "demoapp.tasks.add")},
        "timezone": str(conf.timezone),
        "beat_schedule": sorted(conf.beat_schedule or {}),
        "beat_sync_every": conf.beat_sync_every,
        "tasks": sorted(app.tasks),
        "default_content_type": registry._default_content_type,
        "auth_disabled": "application/data" in registry._disabled_content_types,
        "roundtrip": loads(data, content_type, encoding, accept=["application/data"]),
        "json_refused": "application/json" not in [content_type],
        "event_accept": [sorted(app.events.Receiver(None, accept={"json"}).accept),
                         sorted(__import__("celery.events", fromlist=["EventReceiver"]).EventReceiver(None, app=app).accept)],
    }))
""")


def probe(cluster, tmp_path, app_module, paths, env=None, steps=(), config_module=None):
    entry = tmp_path / "entry"
    entry.mkdir(exist_ok=True)
    (entry / "celery_cluster.py").write_text(render_entry(app_module))
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("CELERY_", "DJANGO_")) and key != "PYTHONPATH"}
    environment.update(PYTHONPATH=os.pathsep.join([str(entry), str(cluster)] + [str(p) for p in paths]),
                       PYTHONDONTWRITEBYTECODE="1", CELERY_CONFIG_MODULE=config_module or "celeryconfig")
    environment.update(env or {})
    run = subprocess.run([sys.executable, "-c", PROBE, *steps], capture_output=True, text=True, env=environment,
                         cwd=tmp_path, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def assert_cluster(result, cluster):
    """Every value the cluster owns is the cluster's."""
    assert result["broker_url"] == ";".join(BROKERS)
    assert result["read_url"] == result["write_url"] == ";".join(BROKERS)
    assert result["connection"][:4] == ["broker1", 5671, "worker", "celery"]
    assert result["broker_use_ssl"] == {"ca_certs": "/etc/celery-cluster/pki/ca.crt", "cert_reqs": 2,
                                        "server_hostname": "broker.cluster.internal",
                                        "certfile": str(cluster / "celery.crt"), "keyfile": str(cluster / "celery.key")}
    assert result["result_backend"] == "rpc://" and result["backend_class"] == "RPCBackend"
    assert result["task_serializer"] == result["result_serializer"] == result["event_serializer"] == "auth"
    assert result["accept_content"] == ["auth"] and result["result_accept_content"] is None
    assert result["security"] == [str(cluster / "celery.key"), str(cluster / "celery.crt"),
                                  str(cluster / "signers/*.pem"), "sha256"]
    assert result["security_key_password"] is None
    assert result["exchange"] == ["celery.tasks", "topic"]
    assert result["queues"] == ["celery", "feeds", "media", "web"]
    assert result["routes"] == {"feed.tasks.fetch": "feeds", "video.tasks.transcode": "media",
                                "demoapp.tasks.add": "celery"}
    assert result["timezone"] == "Asia/Tehran"
    # setup_security() ran with the cluster's key: the auth serializer is the
    # default, its decoder enabled, and a message signed here verifies here.
    assert result["default_content_type"] == "application/data" and not result["auth_disabled"]
    assert result["roundtrip"] == {"signed": True}
    # Event receivers take signed events only, even when asked for json:
    # made by the app (celery events, gossip) or by hand (Flower).
    assert result["event_accept"] == [["auth"], ["auth"]]


def test_celerys_django_example_runs_with_the_cluster_configuration(cluster, django_example, tmp_path):
    """The example as shipped: its settings.py sets a guest broker, json and a
    db+sqlite backend; the environment names yet another broker and backend."""
    settings = (django_example / "proj/settings.py").read_text()
    assert "CELERY_BROKER_URL = 'amqp://guest:guest@localhost'" in settings
    assert "CELERY_RESULT_BACKEND = 'db+sqlite:///results.sqlite'" in settings
    result = probe(cluster, tmp_path, "proj", [django_example],
                   env={"CELERY_BROKER_URL": "amqp://guest:guest@env-broker//", "CELERY_RESULT_BACKEND": "redis://env/0",
                        "CELERY_BROKER_READ_URL": "amqp://guest@env-reader//"})
    assert result["main"] == "proj" and result["namespace"] == "CELERY"
    assert_cluster(result, cluster)
    assert {name.rsplit(".", 1)[1] for name in result["tasks"] if name.startswith("demoapp.tasks.")} >= DEMO_TASKS


def test_django_settings_that_override_everything_lose(cluster, django_example, tmp_path):
    """An operator's settings module (outside the example tree) sets every
    cluster-owned value otherwise; the app is named as proj.celery:app."""
    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "ops_settings.py").write_text(textwrap.dedent("""
        from proj.settings import *  # noqa
        CELERY_BROKER_URL = "amqp://guest:guest@10.0.0.1:5672//"
        CELERY_BROKER_READ_URL = "amqp://guest:guest@10.0.0.2:5672//"
        CELERY_BROKER_USE_SSL = False
        CELERY_RESULT_BACKEND = "redis://10.0.0.3/0"
        CELERY_TASK_SERIALIZER = "json"
        CELERY_RESULT_SERIALIZER = "json"
        CELERY_EVENT_SERIALIZER = "json"
        CELERY_ACCEPT_CONTENT = ["json", "pickle"]
        CELERY_RESULT_ACCEPT_CONTENT = ["json"]
        CELERY_SECURITY_KEY = "/srv/other.key"
        CELERY_SECURITY_KEY_PASSWORD = b"other"
        CELERY_TASK_DEFAULT_EXCHANGE = "other"
        CELERY_TASK_ROUTES = {"feed.tasks.*": {"queue": "other"}, "demoapp.tasks.*": {"queue": "other"}}
        CELERY_TIMEZONE = "Europe/Paris"
        CELERY_BEAT_SCHEDULE = {"app-own-entry": {"task": "demoapp.tasks.add", "schedule": 60.0, "args": (1, 2)}}
        BROKER_URL = "amqp://old-style@10.0.0.4//"
    """))
    result = probe(cluster, tmp_path, "proj.celery:app", [django_example, ops],
                   env={"DJANGO_SETTINGS_MODULE": "ops_settings"})
    assert_cluster(result, cluster)
    assert {name.rsplit(".", 1)[1] for name in result["tasks"] if name.startswith("demoapp.tasks.")} >= DEMO_TASKS
    # Beat: the cluster's schedule joins the app's own entries.
    beat = probe(cluster, tmp_path, "proj.celery:app", [django_example, ops],
                 env={"DJANGO_SETTINGS_MODULE": "ops_settings"}, config_module="beatconfig")
    assert_cluster(beat, cluster)
    assert beat["beat_schedule"] == ["app-own-entry", "heartbeat-every-10s", "heartbeat-every-minute"]
    assert beat["beat_sync_every"] == 1


OPS_APP = """
from celery import Celery

app = Celery("opsapp", broker="amqp://guest:guest@localhost:5672//", backend="redis://localhost/0",
             include=["opstasks"])
app.config_from_object("opsconfig")
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                task_routes={"*": {"queue": "elsewhere"}}, broker_use_ssl={"cert_reqs": 0})
"""


@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "configured-at-import"])
def test_a_plain_app_with_hard_coded_values_loses_them(cluster, tmp_path, eager):
    """Celery(broker=, backend=), app.conf.update() and the app's own
    configuration module; with `eager` the app reads its configuration at
    import time, so it is final before the entry module sees it; then the
    app reloads its configuration (config_from_object(force=True))."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "opsapp.py").write_text(OPS_APP + ("assert app.conf.task_serializer == 'json'\n" if eager else ""))
    (app_dir / "opsconfig.py").write_text('broker_url = "amqp://guest@config-broker//"\n'
                                          'result_backend = "db+sqlite:///results.sqlite"\n'
                                          'event_serializer = "json"\nsecurity_digest = "sha1"\n')
    (app_dir / "opstasks.py").write_text("from opsapp import app\n\n@app.task\ndef ping():\n    return 'pong'\n")
    result = probe(cluster, tmp_path, "opsapp", [app_dir])
    assert_cluster(result, cluster)
    assert "opstasks.ping" in result["tasks"]
    reloaded = probe(cluster, tmp_path, "opsapp", [app_dir],
                     steps=["app.config_from_object('opsconfig', force=True)", "assert app.configured"])
    assert_cluster(reloaded, cluster)


def test_the_bundles_example_app_calls_setup_security_too_harmlessly(cluster, tmp_path):
    """celery_example calls setup_security() itself on import; the entry module
    calls it again: the auth decoder stays enabled and signing works."""
    result = probe(cluster, tmp_path, "celery_example", [EXAMPLE_APP])
    assert_cluster(result, cluster)
    assert {"feed.tasks.fetch", "web.tasks.heartbeat", "web.tasks.mark"} <= set(result["tasks"])


def test_an_app_module_that_is_not_there_is_refused_by_name(cluster, tmp_path):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "celery_cluster.py").write_text(render_entry("no_such_proj.celery"))
    run = subprocess.run([sys.executable, "-c", "import celery_cluster"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=f"{entry}{os.pathsep}{cluster}", PYTHONDONTWRITEBYTECODE="1"),
                         cwd=tmp_path, timeout=60, check=False)
    assert run.returncode != 0 and "celery_app_module='no_such_proj.celery' cannot be imported" in run.stderr


# --- the preflight helper (roles/celery/files/check_app_module.py) ---------

@pytest.mark.parametrize("module", ["", "proj celery", "proj.", "-A proj", "proj:app:x", "proj/celery", "1proj"])
def test_preflight_refuses_what_is_not_a_module_path(module):
    problems, _ = checker.problems(module, [])
    assert len(problems) == 1 and problems[0].startswith(f"celery_app_module={module!r}")


@pytest.mark.parametrize("module", ["proj", "proj.celery", "proj.celery:app"])
def test_preflight_accepts_celerys_django_example(django_example, module):
    assert checker.problems(module, [str(django_example)], import_check=True) == ([], [])


def test_preflight_accepts_the_bundles_example_app():
    assert checker.problems("celery_example", [str(EXAMPLE_APP)], import_check=True) == ([], [])


def test_preflight_checks_only_the_syntax_without_sources():
    problems, notes = checker.problems("proj.celery:app", [])
    assert problems == [] and "only its syntax" in notes[0]


@pytest.mark.parametrize("module, files, expected", [
    ("nosuch", {}, "no module nosuch in"),
    ("pkg.nosuch:app", {"pkg/__init__.py": ""}, "no module pkg.nosuch in"),
    ("broken", {"broken/__init__.py": "raise RuntimeError('needs a database')\n"},
     "cannot be imported: RuntimeError: needs a database"),
    ("pkg.celery:app", {"pkg/__init__.py": "", "pkg/celery.py": "app = 42\n"}, "names 42, not a Celery app"),
    ("pkg", {"pkg/__init__.py": "from .sub import app\n"}, "cannot be imported: no module named pkg.sub"),
])
def test_preflight_refuses_an_app_that_cannot_be_imported(tmp_path, module, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    problems, _ = checker.problems(module, [str(tmp_path)], import_check=True)
    assert len(problems) == 1 and problems[0].startswith(f"celery_app_module={module!r}") and expected in problems[0], problems


def test_preflight_notes_a_dependency_the_controller_lacks(tmp_path):
    (tmp_path / "needsdep.py").write_text("import not_installed_dependency_xyz\n")
    problems, notes = checker.problems("needsdep", [str(tmp_path)], import_check=True)
    assert problems == [] and "not_installed_dependency_xyz" in notes[0]


def test_preflight_finds_the_app_in_a_src_layout_and_in_a_wheel(tmp_path):
    import zipfile
    (tmp_path / "src/srcpkg").mkdir(parents=True)
    (tmp_path / "src/srcpkg/__init__.py").write_text("from celery import Celery\napp = Celery('srcpkg')\n")
    assert checker.problems("srcpkg", [str(tmp_path)], import_check=True) == ([], [])
    wheel = tmp_path / "wheelpkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("wheelpkg/__init__.py", "from celery import Celery\napp = Celery('wheelpkg')\n")
    assert checker.problems("wheelpkg", [str(wheel)], import_check=True) == ([], [])
    assert "no module other" in checker.problems("other", [str(wheel)])[0][0]


def test_preflight_command_line_exit_status(tmp_path):
    script = ROOT / "roles/celery/files/check_app_module.py"
    ok = subprocess.run([sys.executable, str(script), "celery_example", "--source", str(EXAMPLE_APP), "--import"],
                        capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, str(script), "nosuch", "--source", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 1 and "celery_app_module='nosuch'" in bad.stderr


# --- every service and tool runs the entry module --------------------------

def test_services_runbooks_and_test_helpers_use_the_entry_module():
    import re
    places = [*ROOT.glob("roles/*/templates/*.j2"), *ROOT.glob("playbooks/**/*.yml"), ROOT / "tests/lib/clusterlib.py",
              *ROOT.glob("molecule/*/tests/*.py")]
    for path in places:
        if path.name == "celery_cluster.py.j2":
            continue  # the entry module itself names the operator's app
        text = path.read_text()
        for match in re.finditer(r"(?:--app\b|CELERY_APP=)[\s,\"']*([\w.:${}]+)", text):
            assert match.group(1) in ("celery_cluster", "${CELERY_APP}"), f"{path}: {match.group(0)}"
        assert "celery_app_module" not in text, path
        assert "from celery_example.app import" not in text, path
