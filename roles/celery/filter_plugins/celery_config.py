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
            from celery.app.defaults import NAMESPACES, flatten  # noqa: PLC0415
            from celery.schedules import crontab  # noqa: PLC0415
            from celery.utils.time import rate, timezone  # noqa: PLC0415
            from kombu import compression  # noqa: PLC0415
        except ImportError:  # reported by celery_config_problems, naming the fix
            _CELERY["missing"] = True
        else:
            _CELERY.update(version=celery.__version__, namespaces=NAMESPACES, flatten=flatten,
                           crontab=crontab, rate=rate, timezones=timezone, compression=compression)
    return None if "missing" in _CELERY else _CELERY


CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
SERIALIZERS = ("auth", "json", "msgpack", "yaml", "pickle")
DIGESTS = ("sha256", "sha384", "sha512", "sha224", "sha3_256", "sha3_384", "sha3_512")
# Python types a setting of each of Celery's option types must have to be
# read as written (Celery does not convert values from a config module).
OPTION_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "string": (str,), "str": (str,),
                "dict": (dict,), "list": (list, tuple), "tuple": (list, tuple)}


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
        wanted = OPTION_TYPES.get(str(options[name].type))
        if value is not None and wanted and (not isinstance(value, wanted) or (bool not in wanted and isinstance(value, bool))):
            problems.append(f"{where}={value!r}: Celery's setting {name} is of type {options[name].type}")
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
    for name in ("celery_task_time_limit", "celery_task_soft_time_limit"):
        value = settings.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            problems.append(f"{name}={value!r}: a time limit is a positive number of seconds, or null")
    soft, hard = settings.get("celery_task_soft_time_limit"), settings.get("celery_task_time_limit")
    if isinstance(soft, (int, float)) and isinstance(hard, (int, float)) and soft > 0 and hard > 0 and soft >= hard:
        problems.append(f"celery_task_soft_time_limit={soft} must be below celery_task_time_limit={hard}")
    prefetch = settings.get("celery_worker_prefetch_multiplier")
    if prefetch is not None and (not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0):
        problems.append(f"celery_worker_prefetch_multiplier={prefetch!r}: a whole number, 0 or more")
    retries = settings.get("celery_result_backend_max_retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        problems.append(f"celery_result_backend_max_retries={retries!r}: a whole number, 0 or more, or null")
    default_rate = settings.get("celery_task_default_rate_limit")
    if default_rate not in (None, "") and (problem := _rate_problem(default_rate)):
        problems.append(f"celery_task_default_rate_limit={default_rate!r}: {problem}")
    for task, annotation in (settings.get("celery_task_annotations") or {}).items():
        limit = (annotation or {}).get("rate_limit")
        if limit not in (None, "") and (problem := _rate_problem(limit)):
            problems.append(f"celery_task_annotations[{task!r}].rate_limit={limit!r}: {problem}")
    queues = set(settings.get("celery_task_queues") or [])
    for index, rule in enumerate(settings.get("celery_task_routes") or []):
        where = f"celery_task_routes[{index}]"
        if not isinstance(rule, dict) or not rule.get("queue") or bool(rule.get("glob")) == bool(rule.get("regex")):
            problems.append(f"{where}: give exactly one of glob or regex, and a queue")
            continue
        if rule.get("regex"):
            try:
                re.compile(rule["regex"])
            except re.error as error:
                problems.append(f"{where}.regex={rule['regex']!r} does not compile: {error}")
        if queues and rule["queue"] not in queues and not settings.get("celery_task_create_missing_queues", True):
            problems.append(f"{where}.queue={rule['queue']!r} is not in celery_task_queues")
    for index, entry in enumerate(settings.get("celery_beat_schedule") or []):
        where = f"celery_beat_schedule[{entry.get('name', index)!r}]"
        if not entry.get("name") or not entry.get("task"):
            problems.append(f"{where}: every entry needs a name and a task")
        has_interval, has_crontab = entry.get("interval") is not None, entry.get("crontab") is not None
        if has_interval == has_crontab:
            problems.append(f"{where}: give exactly one of interval (seconds) or crontab")
        if has_interval and (isinstance(entry["interval"], bool) or not isinstance(entry["interval"], (int, float))
                             or entry["interval"] <= 0):
            problems.append(f"{where}.interval={entry['interval']!r}: a positive number of seconds")
        for field, value in (entry.get("crontab") or {}).items():
            if field not in CRONTAB_FIELDS:
                problems.append(f"{where}.crontab.{field}: unknown field (use {', '.join(CRONTAB_FIELDS)})")
                continue
            problem = _crontab_field_problem(field, value)
            if problem:
                problems.append(f"{where}.crontab.{field}={value!r} {problem}")
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
            "celery_python_config": celery_python_config,
            "celery_beat_config": celery_beat_config,
            "celery_signer_store": celery_signer_store,
        }
