"""Filters that turn the celery role's variables into a Celery configuration module.

Written by hand because no maintained module renders Celery settings. Values
are emitted with repr(), so no quoting mistake can produce invalid Python,
and the same rules that Celery applies are checked here first, so that the
preflight play can refuse bad input before anything changes.
"""
import base64
import difflib
import hashlib
import re

# Values are read by Celery's own code, on the controller: the crontab
# parser, the rate-limit parser, the time zone lookup, kombu's compression
# registry and the table of Celery's settings. requirements-dev.txt pins the
# Celery that celery_version names; another version on the controller is
# refused (celery_config_problems), so preflight reads the settings as the
# hosts' Celery will.
#
# Imported on first use, not with this file: Ansible loads every filter plugin
# of the roles into each task's worker process (one per task and host), and
# importing Celery there took about two thirds of a preflight run's CPU.
_CELERY = {}


def _celery():
    """Celery's own parsers and tables, or None when Celery is not installed."""
    if not _CELERY:
        try:
            import celery  # noqa: PLC0415 - imported on first use, see above
            import click  # noqa: PLC0415 - Celery's command line reads the pools' options with it
            from amqp.basic_message import Message  # noqa: PLC0415
            from celery import Celery, concurrency  # noqa: PLC0415
            from celery.app import backends  # noqa: PLC0415
            from celery.app.defaults import NAMESPACES, flatten  # noqa: PLC0415
            from celery.app.task import Task  # noqa: PLC0415
            from celery.bin import worker  # noqa: PLC0415
            from celery.bin.base import LOG_LEVEL  # noqa: PLC0415
            from celery.schedules import crontab  # noqa: PLC0415
            from celery.utils.text import str_to_list  # noqa: PLC0415
            from celery.utils.time import rate, timezone  # noqa: PLC0415
            from kombu import Producer, compression  # noqa: PLC0415
        except ImportError:  # reported by celery_config_problems, naming the fix
            _CELERY["missing"] = True
        else:
            _CELERY.update(version=celery.__version__, namespaces=NAMESPACES, flatten=flatten,
                           crontab=crontab, rate=rate, timezones=timezone, compression=compression,
                           click=click, concurrency=concurrency, backends=backends, task=Task, worker=worker,
                           log_level=LOG_LEVEL, str_to_list=str_to_list,
                           send_options=_send_options(Celery, Task, Producer, Message))
    return None if "missing" in _CELERY else _CELERY


CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
SERIALIZERS = ("auth", "json", "msgpack", "yaml", "pickle")
DIGESTS = ("sha256", "sha384", "sha512", "sha224", "sha3_256", "sha3_384", "sha3_512")
# Python types a setting of each of Celery's option types must have to be
# read as written (Celery does not convert values from a config module).
OPTION_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "string": (str,), "str": (str,),
                "dict": (dict,), "list": (list, tuple), "tuple": (list, tuple)}
# celery_<name> variables the configuration module holds as <name>, as they
# are (bool() leaves True as True, and makes True of the string "false").
RENDERED = ("timezone", "enable_utc", "task_serializer", "accept_content", "event_serializer", "result_serializer",
            "result_accept_content", "security_key", "security_certificate", "security_cert_store", "security_digest",
            "task_default_queue", "task_default_exchange", "task_default_queue_type", "task_create_missing_queues",
            "task_compression", "task_track_started", "task_time_limit", "task_soft_time_limit", "task_acks_late",
            "task_acks_on_failure_or_timeout", "task_reject_on_worker_lost", "result_backend", "result_persistent",
            "result_backend_always_retry", "result_backend_max_retries", "worker_prefetch_multiplier",
            "worker_cancel_long_running_tasks_on_connection_loss", "worker_send_task_events", "task_send_sent_event",
            "broker_connection_retry_on_startup", "beat_sync_every")
# Celery settings the role builds from variables of another shape (checked
# on their own below), and the ones it sets itself.
BUILT = ("task_queues", "task_routes", "task_annotations", "task_default_rate_limit", "beat_schedule",
         "broker_user", "broker_password", "broker_port", "broker_vhost")  # the last four: into broker_url
OWNED = ("broker_url", "broker_use_ssl", "broker_transport_options", "task_default_exchange_type",
         "task_default_routing_key", "control_queue_exclusive", "event_queue_exclusive", "worker_hijack_root_logger",
         "worker_pool")
ROUTE_KEYS = ("glob", "regex", "queue")
BEAT_ENTRY_KEYS = ("name", "task", "interval", "crontab", "args", "kwargs", "expires", "options")
POOL_KEYS = ("name", "queues", "concurrency", "pool", "prefetch_multiplier", "max_tasks_per_child", "autoscale")
# The pools this role runs: eventlet and gevent need libraries it does not install.
ROLE_POOLS = ("prefork", "threads", "solo")


def _send_options(celery_class, task_class, producer_class, message_class):
    """Every option a beat entry's `options` can carry that Celery reads: beat
    calls Task.apply_async or Celery.send_task with them, which hand the rest
    to the task message, to Celery's task sender, to kombu's Producer.publish
    and, as message properties, to py-amqp's Message. Anything else is
    dropped without a word. Read from the signatures of those functions."""
    import inspect  # noqa: PLC0415 - only with Celery

    app = celery_class("preflight", set_as_current=False)
    functions = (celery_class.send_task, task_class.apply_async, app.amqp.as_task_v2,
                 app.amqp._create_task_sender(), producer_class.publish)  # noqa: SLF001 - the sender has no public signature
    names = {name for function in functions for name, parameter in inspect.signature(function).parameters.items()
             if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}
    names.update(name for name, _ in message_class.PROPERTIES)
    # Given by beat itself (twice is a TypeError) or the message's own content.
    return frozenset(names - {"self", "args", "kwargs", "name", "message", "body", "producer", "task_id"})


def _type_problem(where, name, value, options):
    """None when `value` has the Python type of Celery's setting `name`."""
    wanted = OPTION_TYPES.get(str(options[name].type))
    if value is not None and wanted and (not isinstance(value, wanted) or (bool not in wanted and isinstance(value, bool))):
        return f"{where}={value!r}: Celery's setting {name} is of type {options[name].type}"
    return None


def _plain(value):
    """True when repr(value) is Python that imports nothing (a YAML date, a
    set or nan would make the generated module fail when Celery imports it)."""
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_plain(key) and _plain(item) for key, item in value.items())
    return value is None or isinstance(value, (str, int, bool))


def _log_level_problem(name, value):
    """None when Celery's --loglevel takes `value` (as the unit's text)."""
    try:
        _celery()["log_level"].convert(str(value), None, None)
    except Exception as error:  # noqa: BLE001 - click's BadParameter: Celery's refusal
        return f"{name}={value!r}: Celery's --loglevel refuses it ({getattr(error, 'message', error)})"
    return None


def _crontab_field_problem(field, value):
    """None when Celery's crontab parser takes `value` for `field`, else its words."""
    try:
        _celery()["crontab"](**{field: value})
    except Exception as error:  # noqa: BLE001 - ValueError, ParseException...: Celery's refusal, shown as is
        return f"is refused by Celery's crontab: {error}"
    return None


def _rate_problem(value):
    """None when Celery reads `value` as a rate limit, else why not."""
    try:
        per_second = _celery()["rate"](value)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return f"Celery cannot read it as a rate ({type(error).__name__}: {error}): use N/s, N/m or N/h"
    if per_second <= 0:
        return "Celery reads it as no limit at all: use null for no limit"
    return None


def _extra_settings_problems(extra):
    """celery_extra_settings: names Celery does not know are ignored by it
    silently, old upper-case names next to new ones make it refuse to start,
    and values of the wrong type are used as they are."""
    if not isinstance(extra, dict):
        return [f"celery_extra_settings={extra!r}: a mapping of Celery setting names to values"]
    found = _celery()
    options = dict(found["flatten"](found["namespaces"]))
    problems = []
    for name, value in extra.items():
        where = f"celery_extra_settings.{name}"
        if name not in options:
            close = difflib.get_close_matches(str(name), list(options), n=1)
            problems.append(f"{where}: Celery has no such setting and would ignore it"
                            + (f" (did you mean {close[0]}?)" if close else ""))
            continue
        if name in RENDERED + BUILT:
            # Written after the role's own settings, so it would win over the
            # variable the operator reads (and the preflight checks).
            problems.append(f"{where}: the role sets {name} from celery_{name}: set that variable instead")
            continue
        if name in OWNED:
            problems.append(f"{where}: the role sets {name} itself"
                            + (" (and Celery would run it instead of a pool's prefork: set `pool` in "
                               "celery_worker_pools)" if name == "worker_pool" else ""))
            continue
        if problem := _type_problem(where, name, value, options):
            problems.append(problem)
    return problems


def _serializer_problems(settings):
    """Serializer and signing settings Celery (setup_security) would refuse."""
    problems = []
    task = settings.get("celery_task_serializer", "auth")
    accept = settings.get("celery_accept_content", ["auth"])
    result_accept = settings.get("celery_result_accept_content")
    for name in ("celery_task_serializer", "celery_event_serializer", "celery_result_serializer"):
        value = settings.get(name, "auth")
        if value not in SERIALIZERS:
            problems.append(f"{name}={value!r}: use one of {', '.join(SERIALIZERS)}")
    for name, value in (("celery_accept_content", accept), ("celery_result_accept_content", result_accept)):
        if value is None and name == "celery_result_accept_content":
            continue
        if not isinstance(value, list) or not value or any(item not in SERIALIZERS for item in value):
            problems.append(f"{name}={value!r}: a non-empty list of {', '.join(SERIALIZERS)}")
    if "pickle" in (accept or []) + (result_accept or []):
        problems.append("pickle in celery_accept_content/celery_result_accept_content: "
                        "a message could run code while being decoded; use auth or json")
    if task == "auth" and accept != ["auth"]:
        problems.append(f"celery_accept_content={accept!r}: with celery_task_serializer='auth' it must be ['auth'] "
                        "(setup_security refuses anything else: unsigned tasks would be accepted)")
    if "auth" in (accept or []) and task != "auth":
        problems.append(f"celery_task_serializer={task!r}: workers accept only signed tasks "
                        "(celery_accept_content has 'auth'), so tasks must be sent with 'auth'")
    readers = result_accept if result_accept is not None else accept
    result = settings.get("celery_result_serializer", "auth")
    if isinstance(readers, list) and result not in readers:
        problems.append(f"celery_result_serializer={result!r} is not in "
                        f"{'celery_result_accept_content' if result_accept is not None else 'celery_accept_content'}"
                        f"={readers!r}: nobody could read the results")
    if task == "auth" and settings.get("celery_event_serializer", "auth") not in ("auth", "json"):
        problems.append("celery_event_serializer: auth or json (event receivers accept only those)")
    if task == "auth" or "auth" in (readers or []):
        digest = settings.get("celery_security_digest", "sha256")
        if digest not in DIGESTS:
            problems.append(f"celery_security_digest={digest!r}: use one of {', '.join(DIGESTS)}")
        for name in ("celery_security_key", "celery_security_certificate", "celery_security_cert_store"):
            value = settings.get(name)
            if not isinstance(value, str) or not value.startswith("/"):
                problems.append(f"{name}={value!r}: an absolute path is required for message signing")
    return problems


def _setting_type_problems(settings):
    """celery_<name> variables read as Celery's setting <name>: of its type
    (celery_task_acks_late: "false" is a string, and bool("false") is True);
    and the Celery settings that are no variable of these roles, which the
    role never writes, so Celery would not see them."""
    options = dict(_celery()["flatten"](_celery()["namespaces"]))
    problems = []
    for variable, value in settings.items():
        name = str(variable).removeprefix("celery_")
        if not str(variable).startswith("celery_") or name not in options:
            continue
        if name in RENDERED:
            if problem := _type_problem(variable, name, value, options):
                problems.append(problem)
        elif name not in BUILT:
            problems.append(f"{variable}: no variable of the role, so Celery never sees it: "
                            f"use celery_extra_settings.{name}")
    return problems


def _backend_problems(backend):
    """celery_result_backend: a backend Celery has (its own table and its
    entry points, read by celery.app.backends.by_url). The backends' own
    libraries (redis, SQLAlchemy...) are the hosts' business: they are
    stood in for here, so a missing one on the controller is no refusal."""
    if not isinstance(backend, str) or not backend:
        return [f"celery_result_backend={backend!r}: a result backend URL such as rpc://"]
    if "." in backend.partition("://")[0]:
        return []  # a class of the application's own (package.module:Class), importable on the hosts only
    backends = _celery()["backends"]
    known = {**backends.BACKEND_ALIASES, **dict(backends.load_extension_class_names("celery.result_backends"))}
    stand_in = type("Loader", (), {"override_backends": dict.fromkeys(known, "celery.backends.base:DisabledBackend")})
    try:
        backends.by_url(backend, stand_in)
    except Exception:  # noqa: BLE001 - ImportError, ImproperlyConfigured: Celery has no such backend
        return [f"celery_result_backend={backend!r}: Celery has no such result backend "
                f"(has {', '.join(sorted(known))}, as <name>:// or <name>+<url>; one of another package, "
                "such as django-db, needs that package on the controller too)"]
    return []


def _time_limit_problems(prefix, hard, soft):
    """<prefix>time_limit and <prefix>soft_time_limit: positive numbers of
    seconds or null, the soft one below the hard one (Celery checks neither:
    a soft limit at or above the hard one never fires)."""
    problems = [f"{prefix}{key}={value!r}: a time limit is a positive number of seconds, or null"
                for key, value in (("time_limit", hard), ("soft_time_limit", soft))
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0)]
    if not problems and soft is not None and hard is not None and soft >= hard:
        problems.append(f"{prefix}soft_time_limit={soft} must be below {prefix}time_limit={hard}")
    return problems


def _serializer_override_problem(where, value, accept):
    """A task's own `serializer` (an annotation or a beat entry's option):
    one the workers do not accept (celery_accept_content) makes them refuse
    the task, so it never runs; with 'auth' accepted only, it would also be
    an unsigned task."""
    if value is not None and isinstance(accept, list) and value not in accept:
        return f"{where}.serializer={value!r}: the workers accept only {accept!r} (celery_accept_content)"
    return None


def _annotation_problems(annotations, accept):
    """celery_task_annotations: Celery sets each key as an attribute of the
    task class, so one the Task class does not have is set for nothing."""
    if not isinstance(annotations, dict):
        return [f"celery_task_annotations={annotations!r}: a mapping of task names (or '*') to attributes"]
    task_class, problems = _celery()["task"], []
    for task, annotation in annotations.items():
        where = f"celery_task_annotations[{task!r}]"
        if not isinstance(annotation, dict):
            problems.append(f"{where}={annotation!r}: a mapping of task attributes")
            continue
        for key in annotation:
            if not isinstance(key, str) or key.startswith("_") or not hasattr(task_class, key):
                close = difflib.get_close_matches(str(key), [n for n in dir(task_class) if not n.startswith("_")], n=1)
                problems.append(f"{where}.{key}: Celery's tasks have no such attribute, it would do nothing"
                                + (f" (did you mean {close[0]}?)" if close else ""))
        if problem := _serializer_override_problem(where, annotation.get("serializer"), accept):
            problems.append(problem)
        limit = annotation.get("rate_limit")
        if limit not in (None, "") and (problem := _rate_problem(limit)):
            problems.append(f"{where}.rate_limit={limit!r}: {problem}")
        problems.extend(_time_limit_problems(f"{where}.", annotation.get("time_limit"), annotation.get("soft_time_limit")))
    return problems


def _beat_problems(schedule, declared, accept):
    """celery_beat_schedule, entry by entry, as celery_beat_config renders it
    and Celery's beat then reads it."""
    if not isinstance(schedule, list):
        return [f"celery_beat_schedule={schedule!r}: a list of entries"]
    problems, seen = [], set()
    for index, entry in enumerate(schedule):
        if not isinstance(entry, dict):
            problems.append(f"celery_beat_schedule[{index}]={entry!r}: a mapping (name, task, interval or crontab...)")
            continue
        where = f"celery_beat_schedule[{entry.get('name', index)!r}]"
        if not isinstance(entry.get("name"), str) or not entry["name"] or not isinstance(entry.get("task"), str) \
                or not entry["task"]:
            problems.append(f"{where}: every entry needs a name and a task")
        elif entry["name"] in seen:
            # beat_schedule is a mapping by name: the later entry would replace this one.
            problems.append(f"{where}: a second entry of this name (the last one would replace the first)")
        seen.add(entry.get("name"))
        if unknown := sorted(map(str, set(entry) - set(BEAT_ENTRY_KEYS))):
            problems.append(f"{where}: {', '.join(unknown)} would be ignored (an entry has {', '.join(BEAT_ENTRY_KEYS)}; "
                            "queue, priority and the like go under options)")
        has_interval, has_crontab = entry.get("interval") is not None, entry.get("crontab") is not None
        if has_interval == has_crontab:
            problems.append(f"{where}: give exactly one of interval (seconds) or crontab")
        if has_interval and (isinstance(entry["interval"], bool) or not isinstance(entry["interval"], (int, float))
                             or not _plain(entry["interval"]) or entry["interval"] <= 0):
            problems.append(f"{where}.interval={entry['interval']!r}: a positive number of seconds")
        crontab = entry.get("crontab")
        if has_crontab and not isinstance(crontab, dict):
            problems.append(f"{where}.crontab={crontab!r}: a mapping of crontab fields")
            crontab = {}
        for field, value in (crontab or {}).items():
            if field not in CRONTAB_FIELDS:
                problems.append(f"{where}.crontab.{field}: unknown field (use {', '.join(CRONTAB_FIELDS)})")
                continue
            # The text celery_beat_config writes: [0, 30] or a YAML `on` are
            # read by Celery as the text "[0, 30]" or "True".
            problem = _crontab_field_problem(field, str(value))
            if problem:
                problems.append(f"{where}.crontab.{field}={value!r} {problem}")
        # Celery's task message takes only a list and a mapping (amqp.as_task_v2).
        args, kwargs = entry.get("args"), entry.get("kwargs")
        if args is not None and (not isinstance(args, list) or not _plain(args)):
            problems.append(f"{where}.args={args!r}: a list of plain values (text, numbers, booleans, lists, mappings)")
        if kwargs is not None and (not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs)
                                   or not _plain(kwargs)):
            problems.append(f"{where}.kwargs={kwargs!r}: a mapping of argument names to plain values")
        options = entry.get("options")
        if options is not None and not isinstance(options, dict):
            problems.append(f"{where}.options={options!r}: a mapping of Celery's sending options")
            options = {}
        options = options or {}
        known = _celery()["send_options"]
        for key in sorted(map(str, set(options) - known)):
            close = difflib.get_close_matches(key, sorted(known), n=1)
            problems.append(f"{where}.options.{key}: Celery would send the task without it"
                            + (f" (did you mean {close[0]}?)" if close else ""))
        if not _plain(options):
            problems.append(f"{where}.options={options!r}: plain values only (text, numbers, booleans, lists, mappings)")
        if "expires" in options and entry.get("expires") is not None:
            problems.append(f"{where}: expires given twice (entry and options)")
        expires = entry.get("expires", options.get("expires"))
        # Hand-written: Celery reads a number as seconds from sending and text
        # as an ISO 8601 instant (the same one for every run), and checks neither.
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= 0):
            problems.append(f"{where}.expires={expires!r}: a positive number of seconds")
        if problem := _serializer_override_problem(f"{where}.options", options.get("serializer"), accept):
            problems.append(problem)
        queue = options.get("queue")
        if queue is not None and declared is not None and queue not in declared:
            # Celery would make up a queue of that name on an exchange of that
            # name, which the publish-only broker users may not write to.
            problems.append(f"{where}.options.queue={queue!r}: not a queue of celery_task_queues "
                            "or celery_task_default_queue")
    return problems


def celery_config_problems(settings):
    """Every reason Celery would reject these settings, or read them
    otherwise than written, naming the variable."""
    found = _celery()
    if found is None:
        return ["Celery is not installed on the controller: `pip install -r requirements-dev.txt` "
                "(preflight reads the celery_* settings with Celery's own code)"]
    problems = []
    version = settings.get("celery_version")
    if version and str(version) != found["version"]:
        problems.append(f"celery_version={version!r} but the controller's Celery is {found['version']}: "
                        f"`pip install celery=={version}` on the controller, so preflight reads the settings "
                        "with the Celery the hosts will run")
    problems.extend(_serializer_problems(settings))
    compression = settings.get("celery_task_compression")
    if compression not in (None, ""):
        try:
            found["compression"].get_encoder(compression)
        except KeyError:
            problems.append(f"celery_task_compression={compression!r}: kombu has no such compression "
                            f"(has {', '.join(sorted(found['compression']._aliases))}; "  # noqa: SLF001 - kombu's only list of names
                            "zstd and brotli need their library, on the hosts and the controller) or null")
    zone = settings.get("celery_timezone")
    if zone is not None:
        try:
            found["timezones"].get_timezone(zone)
        except Exception as error:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError...: Celery's refusal
            problems.append(f"celery_timezone={zone!r}: Celery cannot find this time zone ({error})")
    problems.extend(_extra_settings_problems(settings.get("celery_extra_settings") or {}))
    hosts = settings.get("celery_broker_hosts")
    if hosts is not None and (not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts)):
        # A string would be read as one broker per character.
        problems.append(f"celery_broker_hosts={hosts!r}: a list of broker host names")
    problems.extend(_backend_problems(settings.get("celery_result_backend")))
    for name in ("celery_worker_log_level", "celery_beat_log_level"):
        if settings.get(name) is not None and (problem := _log_level_problem(name, settings[name])):
            problems.append(problem)
    sync = settings.get("celery_beat_sync_every")
    if isinstance(sync, int) and not isinstance(sync, bool) and sync < 0:
        # Hand-written: Celery has no check; a negative count syncs after every tick.
        problems.append(f"celery_beat_sync_every={sync}: 0 (every 3 minutes) or more tasks sent")
    problems.extend(_time_limit_problems("celery_task_", settings.get("celery_task_time_limit"),
                                         settings.get("celery_task_soft_time_limit")))
    prefetch = settings.get("celery_worker_prefetch_multiplier")
    if prefetch is not None and (not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0):
        problems.append(f"celery_worker_prefetch_multiplier={prefetch!r}: a whole number, 0 or more")
    retries = settings.get("celery_result_backend_max_retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        problems.append(f"celery_result_backend_max_retries={retries!r}: a whole number, 0 or more, or null")
    default_rate = settings.get("celery_task_default_rate_limit")
    if default_rate not in (None, "") and (problem := _rate_problem(default_rate)):
        problems.append(f"celery_task_default_rate_limit={default_rate!r}: {problem}")
    accept = settings.get("celery_accept_content", ["auth"])
    problems.extend(_annotation_problems(settings.get("celery_task_annotations") or {}, accept))
    queues = settings.get("celery_task_queues") or []
    if not isinstance(queues, list) or not all(isinstance(queue, str) and queue for queue in queues):
        # A string would be rendered as one queue per character.
        problems.append(f"celery_task_queues={queues!r}: a list of queue names")
        queues = None
    valid_queues, queues = queues is not None, set(queues or [])
    for index, rule in enumerate(settings.get("celery_task_routes") or []):
        where = f"celery_task_routes[{index}]"
        if not isinstance(rule, dict) or not isinstance(rule.get("queue"), str) or not rule["queue"] \
                or bool(rule.get("glob")) == bool(rule.get("regex")):
            problems.append(f"{where}: give exactly one of glob or regex, and a queue")
            continue
        if unknown := sorted(set(rule) - set(ROUTE_KEYS)):
            problems.append(f"{where}: {', '.join(map(str, unknown))} would be ignored (a rule has {', '.join(ROUTE_KEYS)})")
        if rule.get("regex"):
            try:
                re.compile(rule["regex"])
            except re.error as error:
                problems.append(f"{where}.regex={rule['regex']!r} does not compile: {error}")
        if queues and rule["queue"] not in queues and not settings.get("celery_task_create_missing_queues", True):
            problems.append(f"{where}.queue={rule['queue']!r} is not in celery_task_queues")
    declared = {settings.get("celery_task_default_queue", "celery"), *queues} if valid_queues else None
    problems.extend(_beat_problems(settings.get("celery_beat_schedule") or [], declared, accept))
    # Last, for the variables no check above named already (one problem each).
    named = {re.split(r"[=:\[. ]", problem, maxsplit=1)[0] for problem in problems}
    problems.extend(problem for problem in _setting_type_problems(settings)
                    if re.split(r"[=:]", problem, maxsplit=1)[0] not in named)
    return problems


def _pool_number(where, key, value):
    """(number, None) as Celery's command line reads `--<key> <value>` (an
    int: click's INT, as celery worker declares it), or (None, why not)."""
    try:
        return _celery()["click"].INT.convert(str(value), None, None), None
    except Exception as error:  # noqa: BLE001 - click's BadParameter: Celery's refusal
        return None, f"{where}.{key}={value!r}: Celery's --{key.replace('_', '-')} refuses it ({error.message})"


def celery_worker_problems(settings):
    """Every reason `celery worker`, started with a pool's options
    (celery_worker pool.env.j2), would refuse them or read them otherwise
    than written, naming the pool and the key. `settings`: the celery_*
    variables of the host (celery_worker_pools, celery_worker_prefetch_multiplier)."""
    found = _celery()
    if found is None:
        return ["Celery is not installed on the controller: `pip install -r requirements-dev.txt` "
                "(preflight reads the pools with Celery's own code)"]
    pools = settings.get("celery_worker_pools") or []
    if not isinstance(pools, list):
        return [f"celery_worker_pools={pools!r}: a list of pools"]
    click, problems = found["click"], []
    default_prefetch = settings.get("celery_worker_prefetch_multiplier")
    for index, pool in enumerate(pools):
        if not isinstance(pool, dict):
            problems.append(f"celery_worker_pools[{index}]={pool!r}: a mapping (name, queues, concurrency...)")
            continue
        where = f"celery_worker_pools[{pool.get('name', index)!r}]"
        if unknown := sorted(map(str, set(pool) - set(POOL_KEYS))):
            problems.append(f"{where}: {', '.join(unknown)} would be ignored (a pool has {', '.join(POOL_KEYS)})")
        queues = pool.get("queues")
        if isinstance(queues, list) and queues and all(isinstance(queue, str) for queue in queues):
            read = found["str_to_list"](",".join(queues))  # --queues, as Celery splits it
            if read != queues:
                problems.append(f"{where}.queues={queues!r}: Celery would read {read!r} (no commas, no empty names)")
        kind = pool.get("pool", "prefork")
        if kind not in found["concurrency"].get_available_pool_names():
            problems.append(f"{where}.pool={kind!r}: Celery has no such pool "
                            f"(has {', '.join(found['concurrency'].get_available_pool_names())})")
        elif kind not in ROLE_POOLS:
            problems.append(f"{where}.pool={kind!r}: use one of {', '.join(ROLE_POOLS)} "
                            "(the role installs no eventlet or gevent)")
        autoscale = pool.get("autoscale")
        if autoscale not in (None, ""):
            problems.extend(_autoscale_problems(where, autoscale, kind))
        elif "concurrency" in pool:
            problems.extend(_concurrency_problems(where, pool["concurrency"]))
        prefetch = pool.get("prefetch_multiplier")
        if prefetch is not None:
            number, problem = _pool_number(where, "prefetch_multiplier", prefetch)
            if problem or number < 0 or isinstance(prefetch, bool):
                # Negative: the worker would ask the broker for a negative prefetch count.
                problems.append(problem or f"{where}.prefetch_multiplier={prefetch!r}: a whole number, 1 or more")
            elif number == 0 and default_prefetch != 0:
                # celery worker: `value or app.conf.worker_prefetch_multiplier`
                # (None: not set on the host, the celery role's default 1).
                problems.append(f"{where}.prefetch_multiplier=0: Celery reads 0 as celery_worker_prefetch_multiplier "
                                f"({default_prefetch if default_prefetch is not None else 1}): give 1 or more")
        most = pool.get("max_tasks_per_child")
        if most is not None:
            number, problem = _pool_number(where, "max_tasks_per_child", most)
            if problem or number < 1 or isinstance(most, bool):
                # Hand-written: billiard's Pool raises "maxtasksperchild must be
                # a positive int or None" in its constructor, with no function of its own.
                problems.append(problem or f"{where}.max_tasks_per_child={most!r}: a whole number, 1 or more")
            elif kind != "prefork":
                problems.append(f"{where}.max_tasks_per_child={most!r}: only the prefork pool recycles its "
                                f"processes; Celery's {kind} pool would ignore it")
    return problems


def _concurrency_problems(where, value):
    """--concurrency, read as `celery worker` reads it: the option's own type,
    then its callback (Celery 5.6: int, then the configured value for 0;
    5.7: also 'auto'), taken from the click command, so any supported
    Celery on the controller reads it its own way."""
    found = _celery()
    configured = object()  # what Celery falls back to: worker_concurrency, the CPU count by default
    context = type("Context", (), {"obj": type("Obj", (), {"app": type("App", (), {
        "conf": type("Conf", (), {"worker_concurrency": configured})})})})
    option = next(param for param in found["worker"].worker.params if param.name == "concurrency")
    try:
        number = option.callback(context, option, option.type.convert(str(value), option, None))
    except found["click"].BadParameter as error:
        return [f"{where}.concurrency={value!r}: Celery's --concurrency refuses it ({error.message})"]
    if number is configured:
        return [f"{where}.concurrency={value!r}: Celery reads it as the CPU count: a whole number, 1 or more"]
    if not isinstance(number, int) or isinstance(value, bool) or number < 1:  # 'auto': the role sizes pools by number
        return [f"{where}.concurrency={value!r}: a whole number, 1 or more"]
    return []


def _autoscale_problems(where, value, kind):
    """--autoscale, read by Celery's own option type: "max,min"."""
    found = _celery()
    try:
        most, least = found["worker"].Autoscale().convert(str(value), None, None)
    except Exception as error:  # noqa: BLE001 - BadParameter, or the AttributeError Celery 5.7 raises composing it
        return [f"{where}.autoscale={value!r}: Celery's --autoscale refuses it "
                f"({getattr(error, 'message', None) or type(error).__name__}): \"max,min\", whole numbers"]
    problems = []
    written = [int(part) for part in str(value).split(",")]
    if written != sorted(written, reverse=True):
        problems.append(f"{where}.autoscale={value!r}: Celery reads it as max {most}, min {least}: write \"{most},{least}\"")
    if least < 0 or most < 1:
        problems.append(f"{where}.autoscale={value!r}: at most 1 or more processes, at least 0 or more")
    if kind != "prefork":
        # Hand-written: only the prefork pool gets grow() and shrink() (on
        # start, celery/concurrency/prefork.py); the autoscaler calls them.
        problems.append(f"{where}.autoscale={value!r}: only the prefork pool can grow and shrink, not {kind}")
    return problems


def _queue(name, settings):
    exchange = settings["celery_task_default_exchange"]
    arguments = {"x-queue-type": settings["celery_task_default_queue_type"]}
    # no_declare: kombu then declares neither the queue, nor its exchange, nor
    # the binding before a publish (publish-only broker users, README).
    no_declare = "" if settings.get("celery_task_declare_queues", True) else ", no_declare=True"
    return (f"Queue({name!r}, Exchange({exchange!r}, type='topic'{no_declare}), routing_key={name!r}, "
            f"queue_arguments={arguments!r}{no_declare})")


def celery_python_config(settings, broker_urls, ssl_options=None, extra=None):
    """Python source for the configuration module of one host."""
    lines = ["import re", "import ssl", "", "from kombu import Exchange, Queue", ""]

    def put(name, value):
        lines.append(f"{name} = {value!r}")

    put("broker_url", ";".join(broker_urls))
    if ssl_options:
        lines.append("broker_use_ssl = {")
        for key, value in sorted(ssl_options.items()):
            rendered = "ssl.CERT_REQUIRED" if key == "cert_reqs" else repr(value)
            lines.append(f"    {key!r}: {rendered},")
        lines.append("}")
    put("broker_transport_options", {"confirm_publish": bool(settings["celery_broker_confirm_publish"])})
    put("broker_connection_retry_on_startup", bool(settings["celery_broker_connection_retry_on_startup"]))
    put("timezone", settings["celery_timezone"])
    put("enable_utc", bool(settings["celery_enable_utc"]))

    lines.append("")
    lines.append("# Serializers and message signing (celery_cluster calls app.setup_security()).")
    put("task_serializer", settings["celery_task_serializer"])
    put("accept_content", list(settings["celery_accept_content"]))
    put("event_serializer", settings["celery_event_serializer"])
    put("result_serializer", settings["celery_result_serializer"])
    if settings.get("celery_result_accept_content") is not None:
        put("result_accept_content", list(settings["celery_result_accept_content"]))
    if settings["celery_task_serializer"] == "auth":
        put("security_key", settings["celery_security_key"])
        put("security_certificate", settings["celery_security_certificate"])
        put("security_cert_store", settings["celery_security_cert_store"])
        put("security_digest", settings["celery_security_digest"])

    lines.append("")
    lines.append("# Routing: one topic exchange, each queue bound by its own name, ordered")
    lines.append("# rules. A topic (not direct) exchange makes Celery publish to it with the")
    lines.append("# queue's routing key instead of falling back to the anonymous exchange, and")
    lines.append("# lets countdown/ETA tasks use native delayed delivery with quorum queues.")
    put("task_default_queue", settings["celery_task_default_queue"])
    put("task_default_exchange", settings["celery_task_default_exchange"])
    put("task_default_exchange_type", "topic")
    put("task_default_routing_key", settings["celery_task_default_queue"])
    put("task_default_queue_type", settings["celery_task_default_queue_type"])
    put("task_create_missing_queues", bool(settings["celery_task_create_missing_queues"]))
    queue_names = list(dict.fromkeys([settings["celery_task_default_queue"]] + list(settings["celery_task_queues"] or [])))
    lines.append("task_queues = [")
    lines.extend(f"    {_queue(name, settings)}," for name in queue_names)
    lines.append("]")
    lines.append("task_routes = ([")
    for rule in settings["celery_task_routes"] or []:
        if rule.get("regex"):
            lines.append(f"    (re.compile({rule['regex']!r}), {{'queue': {rule['queue']!r}}}),")
        else:
            lines.append(f"    ({rule['glob']!r}, {{'queue': {rule['queue']!r}}}),")
    lines.append("],)")

    lines.append("")
    lines.append("# Tasks")
    if settings.get("celery_task_annotations"):
        put("task_annotations", dict(settings["celery_task_annotations"]))
    if settings.get("celery_task_compression"):
        put("task_compression", settings["celery_task_compression"])
    put("task_track_started", bool(settings["celery_task_track_started"]))
    for name in ("task_time_limit", "task_soft_time_limit", "task_default_rate_limit"):
        if settings.get(f"celery_{name}") not in (None, ""):
            put(name, settings[f"celery_{name}"])
    put("task_acks_late", bool(settings["celery_task_acks_late"]))
    put("task_acks_on_failure_or_timeout", bool(settings["celery_task_acks_on_failure_or_timeout"]))
    put("task_reject_on_worker_lost", bool(settings["celery_task_reject_on_worker_lost"]))

    lines.append("")
    lines.append("# Results")
    put("result_backend", settings["celery_result_backend"])
    put("result_persistent", bool(settings["celery_result_persistent"]))
    put("result_backend_always_retry", bool(settings["celery_result_backend_always_retry"]))
    if settings.get("celery_result_backend_max_retries") is not None:
        put("result_backend_max_retries", settings["celery_result_backend_max_retries"])

    lines.append("")
    lines.append("# Workers, events and control: exclusive queues (RabbitMQ 4 deprecates")
    lines.append("# transient non-exclusive ones).")
    put("worker_prefetch_multiplier", settings["celery_worker_prefetch_multiplier"])
    put("worker_cancel_long_running_tasks_on_connection_loss",
        bool(settings["celery_worker_cancel_long_running_tasks_on_connection_loss"]))
    put("worker_send_task_events", bool(settings["celery_worker_send_task_events"]))
    put("task_send_sent_event", bool(settings["celery_task_send_sent_event"]))
    put("control_queue_exclusive", True)
    put("event_queue_exclusive", True)
    put("worker_hijack_root_logger", True)
    for name, value in sorted((extra or {}).items()):
        put(name, value)
    return "\n".join(lines) + "\n"


def celery_beat_config(schedule):
    """Python source of the beat schedule (imported by beat only)."""
    lines = ["from datetime import timedelta", "", "from celery.schedules import crontab", "",
             "beat_schedule = {"]
    for entry in schedule or []:
        if entry.get("interval") is not None:
            when = f"timedelta(seconds={entry['interval']!r})"
        else:
            fields = ", ".join(f"{k}={str(v)!r}" for k, v in sorted(entry["crontab"].items()))
            when = f"crontab({fields})"
        lines.append(f"    {entry['name']!r}: {{")
        lines.append(f"        'task': {entry['task']!r},")
        lines.append(f"        'schedule': {when},")
        lines.append(f"        'args': {tuple(entry.get('args') or ())!r},")
        lines.append(f"        'kwargs': {dict(entry.get('kwargs') or {})!r},")
        options = dict(entry.get("options") or {})
        if entry.get("expires") is not None:
            options["expires"] = entry["expires"]
        lines.append(f"        'options': {options!r},")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


def celery_signer_store(hosts, hostvars):
    """File name to PEM of every signer certificate the hosts read
    (their registered __celery_signer_pems), one file per certificate:
    <host>@<first 16 hex digits of the PEM's SHA-1>.pem."""
    store = {}
    for signer in hosts:
        found = hostvars[signer].get("__celery_signer_pems") or {}
        for result in found.get("results", []):
            pem = base64.b64decode(result["content"]).decode("ascii").strip() + "\n"
            store[f"{signer}@{hashlib.sha1(pem.strip().encode()).hexdigest()[:16]}.pem"] = pem
    return store


class FilterModule:
    def filters(self):
        return {
            "celery_config_problems": celery_config_problems,
            "celery_worker_problems": celery_worker_problems,
            "celery_python_config": celery_python_config,
            "celery_beat_config": celery_beat_config,
            "celery_signer_store": celery_signer_store,
        }
