"""Helpers for the molecule testinfra suites: hosts by inventory group,
connection attempts and AMQP sessions run *on* the cluster's hosts."""
import functools
import json
import os
import re
import shlex
import socket
import tempfile
import time

import ansible_runner
import testinfra
import testinfra.utils.ansible_runner
import yaml

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.path.join(os.path.dirname(__file__), "..", ".."))
PKI = "/etc/celery-cluster/pki"
CA = f"{PKI}/ca.crt"
VHOST = "celery"


@functools.lru_cache(maxsize=None)
def _runner():
    return testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY)


def group(name):
    """Inventory hostnames of a group (empty list when the group is absent)."""
    return sorted(_runner().get_hosts(name))


@functools.lru_cache(maxsize=None)
def host(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@functools.lru_cache(maxsize=None)
def secrets():
    with open(os.environ["CLUSTER_SECRETS"], encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def password(user):
    return secrets()[{
        "celery_worker": "vault_rabbitmq_worker_password",
        "celery_producer": "vault_rabbitmq_producer_password",
        "celery_client": "vault_rabbitmq_client_password",
        "celery_monitor": "vault_rabbitmq_monitor_password",
        "admin": "vault_rabbitmq_admin_password",
    }[user]]


_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("OPEN")
except Exception as error:
    print("CLOSED", type(error).__name__, error)
"""


def broker_pid(name):
    """The MainPID of rabbitmq-server on a broker ("0" when it is stopped)."""
    return host(name).check_output("systemctl show --property MainPID --value rabbitmq-server").strip()


def tcp_open(source, target, port, timeout=3):
    """True when `source` (a hostname) can open a TCP connection to target:port."""
    out = host(source).check_output("python3 -c %s %s %s %s", _CONNECT, target, str(port), str(timeout))
    return out.startswith("OPEN"), out


# Runs on a cluster host with Debian's python3-amqp: one AMQP session over TLS
# that verifies the broker certificate against the cluster CA, then the
# actions given as JSON. Prints one JSON line: {"ok": ..., "result"|"error"}.
_AMQP = r"""
import json, sys
import amqp
spec = json.loads(sys.argv[1])
# py-amqp builds the context itself from "context" (a bare SSLContext is
# ignored) and has no client certificate option there: load it into the
# context py-amqp creates.
tls = {"context": {"cafile": spec["ca"], "check_hostname": True}, "server_hostname": spec["host"]}
if spec.get("cert"):
    import ssl
    _default_context = ssl.create_default_context
    def _with_client_certificate(*args, **kwargs):
        context = _default_context(*args, **kwargs)
        context.load_cert_chain(spec["cert"], spec["key"])
        return context
    ssl.create_default_context = _with_client_certificate
result = []
try:
    with amqp.Connection(host="%s:%d" % (spec["host"], spec["port"]), userid=spec["user"],
                         password=spec["password"], virtual_host=spec["vhost"],
                         ssl=tls if spec["tls"] else False, connect_timeout=10) as conn:
        conn.connect() if not conn.connected else None
        ch = conn.channel()
        ch.confirm_select()
        for action in spec["actions"]:
            kind = action[0]
            if kind == "declare":  # ["declare", queue] or ["declare", queue, {arguments}]
                ch.queue_declare(action[1], durable=True, auto_delete=False,
                                 arguments=action[2] if len(action) > 2 else None)
            elif kind == "declare_transient":  # non-durable, non-exclusive (RabbitMQ 4 deprecates it)
                ch.queue_declare(action[1], durable=False, auto_delete=True)
            elif kind == "exchange":
                ch.exchange_declare(action[1], "topic", durable=True, auto_delete=False)
            elif kind == "bind":  # ["bind", queue, exchange, routing_key]
                ch.queue_bind(action[1], action[2], action[3])
            elif kind == "publish":  # ["publish", routing_key, count, marker, exchange]
                for i in range(action[2]):
                    ch.basic_publish_confirm(amqp.Message("%s-%d" % (action[3], i), delivery_mode=2),
                                     exchange=action[4] if len(action) > 4 else "", routing_key=action[1],
                                     confirm_timeout=10)  # wait for the broker's confirm
            elif kind == "get":
                got = []
                for _ in range(action[2]):
                    msg = ch.basic_get(action[1], no_ack=False)
                    if msg is None:
                        break
                    got.append(msg.body if isinstance(msg.body, str) else msg.body.decode())
                    ch.basic_ack(msg.delivery_tag)
                result.append(got)
            elif kind == "delete":
                ch.queue_delete(action[1])
    print(json.dumps({"ok": True, "result": result}))
except Exception as error:
    print(json.dumps({"ok": False, "error": "%s: %s" % (type(error).__name__, error)}))
"""


def amqp_session(source, user, actions, target, *, secret=None, vhost=VHOST, port=5671, tls=True, certificate=True):
    """Run AMQP actions from host `source` as `user`; returns the parsed JSON line.
    With `certificate`, the session presents the host's own certificate
    (mutual TLS), or the (cert, key) paths given instead."""
    if certificate is True:
        certificate = (f"{PKI}/celery.crt", f"{PKI}/celery.key")
    spec = {"host": target, "port": port, "user": user, "password": secret or password(user),
            "vhost": vhost, "tls": tls, "ca": CA, "actions": actions}
    if certificate:
        spec["cert"], spec["key"] = certificate
    out = host(source).check_output("python3 -c %s %s", _AMQP, json.dumps(spec))
    return json.loads(out.splitlines()[-1])


class PlaybookRun:
    """One ansible-playbook run: its exit status, its output as an operator
    reads it (stderr included: ansible-runner gives one terminal stream) and
    its recap as data (`stats`, ansible-runner's per-status host counts)."""

    def __init__(self, returncode, stdout, stats):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = ""
        self.stats = stats or {}

    def changed(self, name):
        """The changed count of host `name`; the run must have succeeded and reached it."""
        reached = set().union(*(self.stats.get(key, {}) for key in ("ok", "changed", "skipped", "failures", "dark")))
        assert self.returncode == 0 and name in reached, self.stdout[-3000:]
        return self.stats.get("changed", {}).get(name, 0)

    def outcome(self, task, name):
        """How the task named `task` (role prefix included) ended on host
        `name`: ok, changed, skipping, failed or fatal; None when the task
        ran but not on that host. The task must be in the run."""
        parts = self.stdout.split(f"TASK [{task}]", 1)
        assert len(parts) == 2, f"no task {task!r} in the run"
        block = parts[1].split("\nTASK [", 1)[0]
        found = re.search(rf"^(ok|changed|skipping|failed|fatal): \[{re.escape(name)}[\] ]", block, re.MULTILINE)
        return found.group(1) if found else None


def run_playbook(playbook, *extra, inventory=None, secrets_file=None, env=None):
    """Run one of the repository's playbooks (a path, or a list of paths run
    in one ansible-playbook run) against the scenario's hosts (`env`: more
    environment for ansible-playbook). Through ansible-runner, so the recap
    comes back as data, not as text to parse."""
    # The scenario's own extra vars (its admin address, say), as its converge got them.
    scenario = [f"--extra-vars={os.environ['CLUSTER_EXTRA_VARS']}"] if os.environ.get("CLUSTER_EXTRA_VARS") else []
    args = ["-i", inventory or INVENTORY, f"--extra-vars=@{secrets_file or os.environ['CLUSTER_SECRETS']}",
            *scenario, *extra]
    paths = [playbook] if isinstance(playbook, str) else list(playbook)
    paths = [os.path.join(PROJECT, path) for path in paths]
    # Several playbooks in one run: one play list importing them, as
    # `ansible-playbook a.yml b.yml` would run them.
    target = paths[0] if len(paths) == 1 else [{"ansible.builtin.import_playbook": path} for path in paths]
    # ansible.cfg's strategy (Mitogen) unless CLUSTER_ANSIBLE_STRATEGY names another (linear).
    # ansible-runner turns host key checking off unless it is set: it stays
    # on. Its output is a terminal's: no colours there.
    environment = dict(ANSIBLE_CONFIG=os.path.join(PROJECT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                       ANSIBLE_HOST_KEY_CHECKING=os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "True"), **(env or {}))
    if os.environ.get("CLUSTER_ANSIBLE_STRATEGY"):
        environment["ANSIBLE_STRATEGY"] = os.environ["CLUSTER_ANSIBLE_STRATEGY"]
    with tempfile.TemporaryDirectory(prefix="run-playbook-") as private:
        run = ansible_runner.run(private_data_dir=private, project_dir=os.path.abspath(PROJECT), playbook=target,
                                 cmdline=" ".join(shlex.quote(arg) for arg in args), envvars=environment,
                                 timeout=600, quiet=True, fact_cache_type="memory",
                                 # Without a callback of its own, ansible-runner replaces the
                                 # process's SIGINT and SIGTERM handlers for good: pytest could
                                 # no longer be stopped between two runs.
                                 cancel_callback=lambda: False)
        return PlaybookRun(run.rc if run.status != "timeout" else 124, run.stdout.read(), run.stats)


def recap_changed(result, name):
    """The changed count of host `name` in a successful run_playbook result."""
    return result.changed(name)


# The celery role's handle: the celery command line and the venv's Python as
# the services run them (the celery user, the cluster's configuration module).
CELERY = "celery-cluster"


def celery_python(source_host, code, timeout=120):
    """Run Python with the host's Celery app (as the celery user); returns the
    last stdout line parsed as JSON."""
    out = host(source_host).check_output("timeout %s " + CELERY + " python -c %s", str(timeout), code)
    return json.loads(out.splitlines()[-1])


def celery_cli(source_host, *args):
    """The celery command line of the host's app (through the entry module,
    celery_cluster, as the services run it), as the celery user."""
    return host(source_host).run(CELERY + " " + " ".join(["%s"] * len(args)), *args)


def inventory_groups(data):
    """Every group of a YAML inventory (parsed) by name, whether top-level
    (molecule's inventory) or nested under children (the lab's)."""
    found = {}

    def walk(node):
        for name, group_data in (node or {}).items():
            if isinstance(group_data, dict):
                found.setdefault(name, group_data)
                walk(group_data.get("children"))
    walk(data)
    return found


def variant(name, edit):
    """A copy of the scenario's inventory, edited by edit(data), beside it (so
    group_vars, host_vars and the CA directory apply); returns its path."""
    with open(INVENTORY, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    edit(data)
    path = os.path.join(os.path.dirname(INVENTORY), f"variant-{name}.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


def inventory_vars(hostname):
    """Variables of one host as the inventory defines them (host_vars included)."""
    return _runner().get_variables(hostname)


def all_marks():
    """Every token that the example's web.tasks.mark left on any worker host."""
    return {token for worker in group("celery_workers")
            for token in host(worker).run("ls /var/lib/celery/marks").stdout.split()}


def wait_until(condition, deadline, interval=2, done=bool):
    """The tests' one way to wait: call condition() every `interval`
    seconds until done(its result) is true (by default: the result is) or
    `deadline` seconds have passed; returns its last result."""
    end = time.monotonic() + deadline
    while not done(result := condition()) and time.monotonic() < end:
        time.sleep(interval)
    return result


def wait_marks(tokens, seconds):
    """Poll until every token left its mark or `seconds` passed; returns the missing ones."""
    return wait_until(lambda: set(tokens) - all_marks(), seconds, interval=3, done=lambda missing: not missing)


REMOTE_LOG_DIR = "/var/log/remote"


# The log server's file of every program it does not list
# (rsyslog_server_program_files): <source>/_other.log.
REMOTE_OTHER = "_other"
# A program's lines: its own file when the server lists it, else its lines of
# the catch-all (field 3 of rsyslog's file format is the tag, "prog[pid]:" or
# "prog:").
_PROGRAM_LINES = (
    'if [ -e "$1/$2.log" ]; then cat "$1/$2.log"; '
    'elif [ -e "$1/$3.log" ]; then awk -v t="$2" \'$3 == t ":" || index($3, t "[") == 1\' "$1/$3.log"; fi')


def remote_log(source, program, server=None):
    """The lines of `program` from `source` on the log server: its file
    <source>/<program>.log when the server gives it one, else its lines of
    <source>/_other.log ("" while none arrived)."""
    result = host(server or group("logserver")[0]).run(
        "sh -c %s sh %s %s %s", _PROGRAM_LINES, f"{REMOTE_LOG_DIR}/{source}", program, REMOTE_OTHER)
    return result.stdout if result.rc == 0 else ""


def wait_for_remote_log(source, program, needle, deadline=90):
    """Poll the log server until `needle` is in `program`'s lines from
    `source` (remote_log) or the deadline passes; returns those lines."""
    return wait_until(lambda: remote_log(source, program), deadline, done=lambda text: needle in text)


_BEAT_SENT = re.compile(r"^(\d+\.\d+) .*Scheduler: Sending due task (\S+) ")


def beat_sent(beat_host, since_seconds):
    """(unix time, entry name) of every entry beat sent in the last seconds."""
    out = host(beat_host).check_output(
        "journalctl --no-pager --output short-unix --unit celery-beat.service --since=-%ss", str(since_seconds))
    return [(float(m.group(1)), m.group(2)) for m in map(_BEAT_SENT.match, out.splitlines()) if m]


def address(name):
    """The host's address on the cluster network (its first address)."""
    return host(name).check_output("hostname -I").split()[0]


def http_get(url, *, auth=None, cafile=None, timeout=20, server_name=None):
    """GET from the controller; returns (status, body). auth is (user, password);
    HTTPS is verified against cafile (hostname included: the URL's host, or
    server_name when the certificate names the server otherwise, e.g. a
    broker reached by address whose certificate carries the cluster's name)."""
    import base64
    import http.client
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    if server_name:
        parsed = urllib.parse.urlsplit(url)
        connection = http.client.HTTPSConnection(parsed.hostname, parsed.port or 443, timeout=timeout, context=context)
        connection.connect = lambda: setattr(connection, "sock", context.wrap_socket(
            socket.create_connection((parsed.hostname, parsed.port or 443), timeout), server_hostname=server_name))
        try:
            connection.request("GET", parsed.path + (f"?{parsed.query}" if parsed.query else ""), headers=headers)
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            connection.close()
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def artifact_path(name):
    """Where a test keeps what a person may want to look at afterwards:
    artifacts/<scenario>/ in the repository (git-ignored). Not molecule's
    ephemeral directory: `molecule test` prunes it when the scenario ends."""
    scenario = os.environ.get("MOLECULE_SCENARIO_NAME", "lab")
    path = os.path.join(PROJECT, "artifacts", scenario, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path
