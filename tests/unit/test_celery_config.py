"""The configuration the celery role generates, loaded into a real Celery app:
routing, queues and the beat schedule behave as the variables say, and every
value Celery would reject is refused by name before anything is deployed."""
import importlib.util
import pathlib
import re
import subprocess
import sys
import types

import pytest
import yaml
from celery import Celery
from celery.schedules import crontab

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("celery_filters", ROOT / "roles/celery/filter_plugins/celery_config.py")
filters = importlib.util.module_from_spec(spec)
spec.loader.exec_module(filters)


def settings(**overrides):
    """The role's defaults, then the cluster's group_vars, then overrides."""
    values = yaml.safe_load((ROOT / "roles/celery/defaults/main.yml").read_text())
    cluster = yaml.safe_load((ROOT / "group_vars/all/celery.yml").read_text())
    main = yaml.safe_load((ROOT / "group_vars/all/main.yml").read_text())
    cluster["celery_task_default_exchange"] = main["cluster_task_exchange"]
    cluster["celery_task_queues"] = main["cluster_task_queues"]
    values.update(cluster)
    values.update(overrides)
    # Resolve the defaults' plain "{{ name }}" references, as Ansible would.
    for _ in range(3):
        for key, value in values.items():
            if isinstance(value, str):
                values[key] = re.sub(r"\{\{ (\w+) \}\}",
                                     lambda m: str(values[m.group(1)]) if isinstance(values.get(m.group(1)), (str, int)) else m.group(0),
                                     value)
    return values


def load(source):
    module = types.ModuleType("generated_config")
    exec(compile(source, "celeryconfig.py", "exec"), module.__dict__)  # noqa: S102 - our own generated file
    app = Celery("probe", set_as_current=False)
    app.config_from_object(module)
    return app, module


@pytest.fixture(scope="module")
def app():
    source = filters.celery_python_config(settings(), ["amqps://u:p@broker1:5671/celery"],
                                          {"ca_certs": "/ca.crt", "cert_reqs": "required", "server_hostname": None})
    return load(source)[0]


@pytest.mark.parametrize("task, queue", [
    ("feed.tasks.fetch", "feeds"),
    ("web.tasks.render", "web"),
    ("video.tasks.transcode", "media"),
    ("image.tasks.thumbnail", "media"),
    ("audio.tasks.mix", "celery"),   # no rule: the default queue
    ("videos.tasks.x", "celery"),    # the regex is anchored to whole words
])
def test_routes_send_each_family_to_its_queue(app, task, queue):
    route = app.amqp.router.route({}, task)
    assert route["queue"].name == queue


def test_task_queues_hang_off_one_topic_exchange_named_apart_and_are_quorum(app):
    for queue in app.amqp.queues.values():
        assert queue.exchange.name == "celery.tasks" and queue.exchange.type == "topic"
        assert queue.routing_key == queue.name != queue.exchange.name
        assert queue.queue_arguments["x-queue-type"] == "quorum"


@pytest.mark.parametrize("declare", [True, False])
def test_publish_only_hosts_never_declare_a_task_queue_or_its_exchange(declare):
    """celery_task_declare_queues: false (beat, clients) renders the queues
    no_declare: kombu then skips the queue, its exchange and the binding
    before a publish, which a publish-only broker user would be refused.
    The route Celery picks for a task carries the same Queue object."""
    source = filters.celery_python_config(settings(celery_task_declare_queues=declare),
                                          ["amqps://u:p@broker1:5671/celery"], {})
    probe = load(source)[0]
    queue = probe.amqp.router.route({}, "web.tasks.render")["queue"]
    assert bool(queue.no_declare) is (not declare) and bool(queue.exchange.no_declare) is (not declare)
    assert all(bool(q.no_declare) is (not declare) for q in probe.amqp.queues.values())


def test_reliability_and_event_settings(app):
    conf = app.conf
    assert conf.broker_transport_options == {"confirm_publish": True}
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.control_queue_exclusive and conf.event_queue_exclusive
    assert conf.broker_use_ssl["server_hostname"] is None  # kombu checks each broker's own name
    assert conf.timezone == "Asia/Tehran"


def test_beat_schedule_builds_intervals_and_crontabs():
    source = filters.celery_beat_config(settings()["celery_beat_schedule"])
    namespace = {}
    exec(compile(source, "beatconfig.py", "exec"), namespace)  # noqa: S102
    schedule = namespace["beat_schedule"]
    assert schedule["heartbeat-every-10s"]["schedule"].total_seconds() == 10
    assert schedule["heartbeat-every-10s"]["options"] == {"expires": 9}
    assert isinstance(schedule["heartbeat-every-minute"]["schedule"], crontab)
    assert schedule["heartbeat-every-minute"]["options"]["queue"] == "web"


def test_passwords_with_quotes_stay_valid_python():
    source = filters.celery_python_config(settings(), ["amqps://u:p'\"\\@b:5671/v"], {})
    assert load(source)[1].broker_url == "amqps://u:p'\"\\@b:5671/v"


def test_the_cluster_settings_have_no_problems():
    assert filters.celery_config_problems(settings()) == []


@pytest.mark.parametrize("override, names", [
    ({"celery_task_compression": "snappy"}, "celery_task_compression"),
    ({"celery_task_time_limit": -5}, "celery_task_time_limit"),
    ({"celery_task_soft_time_limit": 0}, "celery_task_soft_time_limit"),
    ({"celery_task_soft_time_limit": 10, "celery_task_time_limit": 5}, "celery_task_soft_time_limit"),
    ({"celery_task_routes": [{"regex": "(video|image\\.tasks", "queue": "media"}]}, "celery_task_routes[0].regex"),
    ({"celery_task_routes": [{"glob": "a.*", "regex": "b", "queue": "q"}]}, "celery_task_routes[0]"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "crontab": {"minute": "61"}}]}, "celery_beat_schedule['x'].crontab.minute"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "crontab": {"hour": "1-24"}}]}, "crontab.hour"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "crontab": {"day_of_week": "funday"}}]}, "crontab.day_of_week"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "crontab": {"minute": "1"}}]}, "celery_beat_schedule['x']"),
    ({"celery_task_annotations": {"*": {"rate_limit": "fast"}}}, "celery_task_annotations['*'].rate_limit"),
    ({"celery_worker_prefetch_multiplier": -1}, "celery_worker_prefetch_multiplier"),
    ({"celery_accept_content": ["auth", "json"]}, "celery_accept_content"),
    ({"celery_task_serializer": "json"}, "celery_task_serializer"),
    ({"celery_security_digest": "md5"}, "celery_security_digest"),
    ({"celery_result_serializer": "json"}, "celery_result_serializer"),
    ({"celery_task_serializer": "json", "celery_accept_content": ["json", "pickle"],
      "celery_result_serializer": "json"}, "pickle"),
    ({"celery_security_cert_store": "signers/*.pem"}, "celery_security_cert_store"),
    # Read by Celery's own code (the crontab and rate parsers, the time zone
    # lookup, the table of its settings), not by a copy of its rules:
    ({"celery_timezone": "Mars/Olympus"}, "celery_timezone='Mars/Olympus': Celery cannot find this time zone"),
    ({"celery_task_default_rate_limit": "10/x"}, "celery_task_default_rate_limit='10/x': Celery cannot read it"),
    ({"celery_task_annotations": {"*": {"rate_limit": "0/s"}}}, "reads it as no limit at all"),
    ({"celery_extra_settings": {"worker_prefetch_multipler": 2}},
     "celery_extra_settings.worker_prefetch_multipler: Celery has no such setting and would ignore it "
     "(did you mean worker_prefetch_multiplier?)"),
    ({"celery_extra_settings": {"worker_max_tasks_per_child": "4"}}, "celery_extra_settings.worker_max_tasks_per_child='4'"),
    ({"celery_extra_settings": {"worker_send_task_events": "no"}}, "of type bool"),
    ({"celery_version": "5.5.0"}, "celery_version='5.5.0' but the controller's Celery is"),
])
def test_values_celery_would_reject_are_named(override, names):
    problems = filters.celery_config_problems(settings(**override))
    assert len(problems) == 1 and names in problems[0], problems


# month_of_year "jan": the hand-written copy of the crontab rules this role
# had refused it; Celery takes month names.
@pytest.mark.parametrize("field, value", [("minute", "*/15"), ("hour", "0-23"), ("day_of_week", "mon-fri"),
                                          ("day_of_month", "1,15"), ("month_of_year", "*/3"),
                                          ("month_of_year", "jan"), ("minute", 5)])
def test_valid_crontab_fields_pass_and_celery_agrees(field, value):
    assert filters._crontab_field_problem(field, value) is None
    crontab(**{field: value})  # Celery accepts it too


def test_signing_settings_are_rendered_for_setup_security(app):
    assert app.conf.task_serializer == "auth" and app.conf.accept_content == ["auth"]
    assert app.conf.event_serializer == "auth" and app.conf.result_serializer == "auth"
    assert app.conf.security_key == "/etc/celery-cluster/pki/celery.key"
    assert app.conf.security_cert_store == "/etc/celery/signers/*.pem"
    assert app.conf.security_digest == "sha256"


def test_signing_off_renders_no_security_settings():
    off = settings(celery_task_serializer="json", celery_accept_content=["json"], celery_event_serializer="json",
                   celery_result_serializer="json")
    assert filters.celery_config_problems(off) == []
    source = filters.celery_python_config(off, ["amqps://u:p@broker1:5671/celery"], {})
    assert "security_key" not in source


def test_signer_store_names_each_certificate_once_per_content():
    import base64
    pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    encoded = base64.b64encode(pem.encode()).decode()
    hostvars = {"w1": {"__celery_signer_pems": {"results": [{"content": encoded}, {"content": encoded}]}},
                "b1": {}}
    store = filters.celery_signer_store(["w1", "b1"], hostvars)
    assert len(store) == 1
    (name, content), = store.items()
    assert re.fullmatch(r"w1@[0-9a-f]{16}\.pem", name) and content == pem


def _fresh_python(code):
    """Run `code` in a new interpreter (this one has imported Celery already)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


LOAD_PLUGIN = ("import importlib.util, sys\n"
               f"spec = importlib.util.spec_from_file_location('f', {str(ROOT / 'roles/celery/filter_plugins/celery_config.py')!r})\n"
               "f = importlib.util.module_from_spec(spec); spec.loader.exec_module(f)\n")


def test_loading_the_plugin_does_not_import_celery():
    """Ansible loads every filter plugin of the roles into each task's worker
    process; Celery is imported only by the checks that read it."""
    before, after = _fresh_python(LOAD_PLUGIN + "print('celery' in sys.modules)\n"
                                  "f.celery_config_problems({'celery_timezone': 'UTC'})\n"
                                  "print('celery' in sys.modules)\n")
    assert (before, after) == ("False", "True")


def test_a_controller_without_celery_is_told_how_to_install_it():
    problems = _fresh_python("import sys; sys.modules['celery'] = None\n" + LOAD_PLUGIN +
                             "print(len(f.celery_config_problems({})), f.celery_config_problems({})[0])")
    assert problems[0] == "1" and "pip install -r requirements-dev.txt" in " ".join(problems)
