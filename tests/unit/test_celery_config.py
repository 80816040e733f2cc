"""The configuration the celery role generates, loaded into a real Celery app:
routing, queues and the beat schedule behave as the variables say, and every
value Celery would reject is refused by name before anything is deployed."""
import datetime
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
    values["celery_broker_hosts"] = ["broker1"]  # groups['rabbitmq'], as Ansible would resolve it
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
    ({"celery_extra_settings": {"worker_enable_remote_control": "no"}}, "of type bool"),
    ({"celery_version": "5.5.0"}, "celery_version='5.5.0' but the controller's Celery is"),
    # Issue 17 item 3: every celery_* value as Celery reads it.
    ({"celery_task_acks_late": "false"}, "celery_task_acks_late='false': Celery's setting task_acks_late is of type bool"),
    ({"celery_worker_prefetch_multiplier": "4"}, "celery_worker_prefetch_multiplier='4'"),
    ({"celery_beat_sync_every": "1"}, "celery_beat_sync_every='1': Celery's setting beat_sync_every is of type int"),
    ({"celery_beat_sync_every": -1}, "celery_beat_sync_every=-1"),
    ({"celery_worker_concurrency": 4}, "celery_worker_concurrency: no variable of the role, so Celery never sees it: "
                                       "use celery_extra_settings.worker_concurrency"),
    ({"celery_extra_settings": {"task_acks_late": False}},
     "celery_extra_settings.task_acks_late: the role sets task_acks_late from celery_task_acks_late"),
    ({"celery_extra_settings": {"worker_pool": "threads"}}, "celery_extra_settings.worker_pool: the role sets worker_pool itself"),
    ({"celery_result_backend": "reddis://cache:6379/0"}, "celery_result_backend='reddis://cache:6379/0': Celery has no such result backend"),
    ({"celery_broker_hosts": "broker1"}, "celery_broker_hosts='broker1': a list of broker host names"),
    ({"celery_task_queues": "feeds"}, "celery_task_queues='feeds': a list of queue names"),
    ({"celery_worker_log_level": "verbose"}, "celery_worker_log_level='verbose': Celery's --loglevel refuses it"),
    ({"celery_beat_log_level": "loud"}, "celery_beat_log_level='loud'"),
    ({"celery_task_routes": [{"glob": "feed.*", "queue": "feeds", "routing_key": "x"}]},
     "celery_task_routes[0]: routing_key would be ignored"),
    ({"celery_task_annotations": {"feed.tasks.sleep": {"rate_limt": "1/s"}}},
     "celery_task_annotations['feed.tasks.sleep'].rate_limt: Celery's tasks have no such attribute, it would do nothing "
     "(did you mean rate_limit?)"),
    ({"celery_task_annotations": {"feed.tasks.sleep": {"soft_time_limit": 30, "time_limit": 3}}},
     "celery_task_annotations['feed.tasks.sleep'].soft_time_limit=30 must be below celery_task_annotations['feed.tasks.sleep'].time_limit=3"),
    ({"celery_task_annotations": {"feed.tasks.sleep": {"time_limit": "30"}}},
     "celery_task_annotations['feed.tasks.sleep'].time_limit='30': a time limit is a positive number"),
    ({"celery_task_annotations": {"feed.tasks.sleep": {"serializer": "json"}}},
     "celery_task_annotations['feed.tasks.sleep'].serializer='json': the workers accept only ['auth']"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "options": {"serializer": "json"}}]},
     "celery_beat_schedule['x'].options.serializer='json': the workers accept only ['auth']"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5}, {"name": "x", "task": "u", "interval": 6}]},
     "celery_beat_schedule['x']: a second entry of this name"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "queue": "web"}]},
     "celery_beat_schedule['x']: queue would be ignored"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "options": {"queue": "web", "prority": 5}}]},
     "celery_beat_schedule['x'].options.prority: Celery would send the task without it (did you mean priority?)"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "options": {"queue": "nowhere"}}]},
     "celery_beat_schedule['x'].options.queue='nowhere': not a queue of celery_task_queues"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "args": "abc"}]},
     "celery_beat_schedule['x'].args='abc': a list"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "kwargs": {"day": datetime.date(2024, 1, 1)}}]},
     "celery_beat_schedule['x'].kwargs="),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "expires": "3600"}]},
     "celery_beat_schedule['x'].expires='3600': a positive number of seconds"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "options": {"expires": 0}}]},
     "celery_beat_schedule['x'].expires=0"),
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "interval": 5, "expires": 9, "options": {"expires": 8}}]},
     "celery_beat_schedule['x']: expires given twice"),
    # Read as the text celery_beat_config writes: "[0, 30]", not the list.
    ({"celery_beat_schedule": [{"name": "x", "task": "t", "crontab": {"minute": [0, 30]}}]},
     "celery_beat_schedule['x'].crontab.minute=[0, 30] is refused by Celery's crontab"),
])
def test_values_celery_would_reject_are_named(override, names):
    problems = filters.celery_config_problems(settings(**override))
    assert len(problems) == 1 and names in problems[0], problems


LAB_POOLS = [{"name": "feeds", "queues": ["feeds"], "concurrency": 2, "max_tasks_per_child": 100},
             {"name": "web", "queues": ["web", "celery"], "concurrency": 4, "pool": "threads"},
             {"name": "media", "queues": ["media"], "autoscale": "4,1", "prefetch_multiplier": 2}]


def test_the_lab_pools_have_no_problems():
    assert filters.celery_worker_problems({"celery_worker_pools": LAB_POOLS, "celery_worker_prefetch_multiplier": 1}) == []
    assert filters.celery_worker_problems({"celery_worker_pools": []}) == []


# Read by Celery's own command line (celery worker's option types and
# callbacks, its pool table), as the unit starts it from pool.env.
@pytest.mark.parametrize("pool, words", [
    ({"concurrency": 0}, "celery_worker_pools['p'].concurrency=0: Celery reads it as the CPU count"),
    ({"concurrency": -2}, "celery_worker_pools['p'].concurrency=-2: Celery's --concurrency refuses it"),
    ({"concurrency": 2.5}, "celery_worker_pools['p'].concurrency=2.5: Celery's --concurrency refuses it"),
    ({"concurrency": True}, "celery_worker_pools['p'].concurrency=True"),
    ({"pool": "fork"}, "celery_worker_pools['p'].pool='fork': Celery has no such pool"),
    ({"pool": "gevent"}, "celery_worker_pools['p'].pool='gevent': use one of prefork, threads, solo"),
    ({"autoscale": "1,4"}, "celery_worker_pools['p'].autoscale='1,4': Celery reads it as max 4, min 1"),
    ({"autoscale": "x,4"}, "celery_worker_pools['p'].autoscale='x,4': Celery's --autoscale refuses it"),
    ({"autoscale": "0,0"}, "celery_worker_pools['p'].autoscale='0,0': at most 1 or more"),
    ({"autoscale": "4,1", "pool": "threads"}, "celery_worker_pools['p'].autoscale='4,1': only the prefork pool can grow"),
    ({"prefetch_multiplier": "1.5"}, "celery_worker_pools['p'].prefetch_multiplier='1.5': Celery's --prefetch-multiplier refuses it"),
    ({"prefetch_multiplier": 0}, "celery_worker_pools['p'].prefetch_multiplier=0: Celery reads 0 as celery_worker_prefetch_multiplier (1)"),
    ({"prefetch_multiplier": -1}, "celery_worker_pools['p'].prefetch_multiplier=-1"),
    ({"max_tasks_per_child": 0}, "celery_worker_pools['p'].max_tasks_per_child=0: a whole number, 1 or more"),
    ({"max_tasks_per_child": "many"}, "celery_worker_pools['p'].max_tasks_per_child='many': Celery's --max-tasks-per-child refuses it"),
    ({"max_tasks_per_child": 50, "pool": "threads"}, "celery_worker_pools['p'].max_tasks_per_child=50: only the prefork pool"),
    ({"queues": ["feeds,web"]}, "celery_worker_pools['p'].queues=['feeds,web']: Celery would read ['feeds', 'web']"),
    ({"time_limit": 30}, "celery_worker_pools['p']: time_limit would be ignored"),
])
def test_pool_options_celery_worker_would_reject_are_named(pool, words):
    problems = filters.celery_worker_problems({"celery_worker_pools": [{"name": "p", "queues": ["feeds"], **pool}]})
    assert len(problems) == 1 and words in problems[0], problems


def test_pool_prefetch_zero_is_as_written_when_the_setting_is_zero_too():
    pools = [{"name": "p", "queues": ["feeds"], "prefetch_multiplier": 0}]
    assert filters.celery_worker_problems({"celery_worker_pools": pools, "celery_worker_prefetch_multiplier": 0}) == []


def test_every_beat_option_the_role_documents_is_one_celery_reads():
    entry = {"name": "x", "task": "t", "interval": 5, "options": {
        "queue": "web", "routing_key": "web", "priority": 5, "expires": 9, "countdown": 1, "headers": {"a": 1}}}
    assert filters.celery_config_problems(settings(celery_beat_schedule=[entry])) == []


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
