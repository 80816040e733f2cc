"""Bad input is refused in the preflight play, before any host changes."""
import contextlib
import json
import os
import re
import tempfile

import pytest
import yaml
from clusterlib import group, host, inventory_groups, run_playbook, variant


def fingerprint():
    """What a run would change: configuration files, units, certificates and
    signer stores on every managed host (the log server included)."""
    return {name: host(name).run(
        "sha256sum /etc/nftables.conf /etc/nftables.d/*.nft /etc/celery/*.py /etc/celery/*.env "
        "/etc/rabbitmq/rabbitmq.conf /etc/systemd/system/celery-* /etc/flower/*.py /etc/systemd/system/flower.service "
        "/etc/rsyslog.conf /etc/rsyslog.d/* /etc/celery-cluster/pki/* /etc/celery/signers/* "
        "2>/dev/null").stdout
        for name in group("rabbitmq") + group("logserver") + group("celery")}


def refused_before_any_play(result):
    """The run stopped in the Preflight play: no later play started, nothing changed."""
    plays = re.findall(r"^PLAY \[(.*?)\]", result.stdout, re.MULTILINE)
    assert plays and all("Preflight" in play or "preflight" in play for play in plays), plays
    assert not any(result.stats.get("changed", {}).values()), result.stdout[-2000:]


def two_beats(data):
    beat_hosts = inventory_groups(data)["celery_beat"]["hosts"]
    beat_hosts[group("celery_workers")[0]] = {"ansible_connection": "community.docker.docker"}


def no_beat(data):
    inventory_groups(data)["celery_beat"]["hosts"] = {}


def flower_on_a_worker(data):
    flower_hosts = inventory_groups(data)["flower"]["hosts"]
    flower_hosts[group("celery_workers")[0]] = {"ansible_connection": "community.docker.docker"}


def client_with_another_application(data):
    clients = inventory_groups(data)["celery_clients"]["hosts"]
    name = group("celery_clients")[0]
    clients[name] = dict(clients[name] or {}, celery_extra_requirements=["six==1.17.0"])


@pytest.mark.parametrize("edit, message", [
    (two_beats, "must hold exactly one host, it holds 2"),
    (no_beat, "must hold exactly one host, it holds 0"),
    # Flower's broker user would be the pools' too: they would never start.
    (flower_on_a_worker, f"{group('celery_workers')[0]} is in flower and in celery_workers"),
    # The play of workers, beat and clients prepares one application, once.
    (client_with_another_application, f'{group("celery_clients")[0]} with celery_extra_requirements=["six==1.17.0"]'),
])
def test_a_bad_layout_of_the_celery_groups_is_refused_before_any_change(edit, message):
    refused_before_any_play(_refused_leaving_every_host_as_it_was("playbooks/site.yml", edit, message))


def _refused_leaving_every_host_as_it_was(playbook, edit, message):
    """The run of `playbook` on the inventory `edit` makes, after checking
    that it failed naming `message` and that no host changed."""
    before = fingerprint()
    inventory = variant(edit.__name__, edit)
    try:
        result = run_playbook(playbook, inventory=inventory)
    finally:
        os.remove(inventory)
    assert result.returncode != 0
    assert message in " ".join(result.stdout.split()), result.stdout[-2000:]
    assert fingerprint() == before
    return result


# celery.yml and monitoring.yml run alone (no preflight play) refuse the
# same layouts in their first play: two beats would otherwise start from
# celery.yml, and monitoring.yml would open Flower's port on a worker.
@pytest.mark.parametrize("playbook, edit, message", [
    ("playbooks/celery.yml", two_beats, "must hold exactly one host, it holds 2"),
    ("playbooks/monitoring.yml", flower_on_a_worker, f"{group('celery_workers')[0]} is in flower and in celery_workers"),
])
def test_celery_and_monitoring_playbooks_alone_refuse_a_bad_layout_before_any_change(playbook, edit, message):
    result = _refused_leaving_every_host_as_it_was(playbook, edit, message)
    plays = re.findall(r"^PLAY \[(.*?)\]", result.stdout, re.MULTILINE)
    assert plays == ["Check the layout of the Celery groups before any change"], plays
    assert not any(result.stats.get("changed", {}).values()), result.stdout[-2000:]


# Each bad input, the words the refusal must contain (the variable, and the
# entry where it applies). Each case runs the whole site.yml (see SHARED_RUNS
# for the cases that share a run): the refusal must come from its first play
# and stop the run before any host changes.
BAD_INPUT = [
    ("guest-user", {"rabbitmq_users": [{"name": "guest", "password": "guest-guest-guest"}]},
     ["rabbitmq_users entry guest", "guest user may not be configured"]),
    ("placeholder-password", {"vault_rabbitmq_worker_password": "CHANGE_ME_please"},
     ["celery_worker", "CHANGE_ME placeholder"]),
    ("cidr-not-a-network", {"rabbitmq_amqp_allow_cidrs": ["10.0.0.300/24"]},
     ["rabbitmq-amqp", "10.0.0.300/24"]),
    ("unknown-group", {"rabbitmq_amqp_allow_groups": ["celery", "wokrers"]},
     ["rabbitmq-amqp", "wokrers", "not an inventory group"]),
    ("api-user-not-an-administrator", {"rabbitmq_api_user": "celery_worker"},
     ["rabbitmq_api_user=celery_worker", "administrator tag"]),
    ("tls-between-brokers-without-tls", {"rabbitmq_tls_enabled": False, "rabbitmq_amqp_plain": "all"},
     ["rabbitmq_dist_tls=true uses the broker's certificate", "rabbitmq_tls_enabled=false"]),
    ("task-exchange-named-as-a-queue", {"rabbitmq_task_exchange": "feeds"},
     ["rabbitmq_task_exchange=feeds", "not the name of a queue"]),
    ("users-without-api-user", {"rabbitmq_api_user": ""},
     ["rabbitmq_api_user=: with rabbitmq_users it must name one of them", "command-line argument"]),
    ("app-directory-missing", {"celery_app_source": "directory", "celery_app_directory": "/nonexistent/proj"},
     ["celery_app_source=directory needs celery_app_directory", "/nonexistent/proj"]),
    ("app-package-not-a-wheel-or-sdist", {"celery_app_source": "package", "celery_app_package": "/etc/hostname"},
     ["celery_app_source=package needs celery_app_package", "/etc/hostname"]),
    ("pool-on-unrouted-queue", {"celery_worker_pools": [{"name": "stray", "queues": ["nowhere"]}]},
     ["celery_worker_pools consume nowhere"]),
    ("regex-does-not-compile", {"celery_task_routes": [{"regex": "(video|image\\.tasks", "queue": "media"}]},
     ["celery_task_routes[0].regex", "does not compile"]),
    ("crontab-out-of-range", {"celery_beat_schedule": [{"name": "bad", "task": "web.tasks.heartbeat",
                                                         "crontab": {"minute": "61"}}]},
     ["celery_beat_schedule['bad'].crontab.minute", "refused by Celery's crontab: Invalid end range: 61 > 59"]),
    ("setting-celery-does-not-know", {"celery_extra_settings": {"worker_prefetch_multipler": 2}},
     ["celery_extra_settings.worker_prefetch_multipler", "did you mean worker_prefetch_multiplier?"]),
    ("negative-time-limit", {"celery_task_time_limit": -5}, ["celery_task_time_limit=-5"]),
    ("unknown-compression", {"celery_task_compression": "snappy"}, ["celery_task_compression='snappy'"]),
    ("flower-placeholder-password", {"vault_flower_password": "CHANGE_ME"},
     ["flower_auth_password", "vault_flower_password", "CHANGE_ME placeholder"]),
    ("flower-short-password", {"vault_flower_password": "short"}, ["flower_auth_password", "12 characters"]),
    ("flower-open-to-nobody", {"flower_allow_cidrs": []}, ["flower_allow_cidrs and flower_allow_groups are both empty"]),
    ("setting-read-as-another-type", {"celery_task_acks_late": "false"},
     ["celery_task_acks_late='false'", "of type bool"]),
    ("autoscale-on-a-threads-pool",
     {"celery_worker_pools": [{"name": "io", "queues": ["feeds"], "pool": "threads", "autoscale": "4,1"}]},
     ["celery_worker_pools['io'].autoscale='4,1'", "only the prefork pool"]),
    ("log-program-name-with-a-slash", {"rsyslog_server_program_files_extra": ["../../etc/cron.d/x"]},
     ["rsyslog_server_program_files", "../../etc/cron.d/x"]),
    ("log-sender-rate-too-low", {"rsyslog_server_sender_rate": 2000},
     ["rsyslog_server_sender_rate must be 0 (no limit) or at least 65536"]),
    # A role's checks are one task: every broken rule is named in the same run, not only the first.
    ("two-broker-rules-at-once", {"rabbitmq_partition_handling": "never", "rabbitmq_task_exchange": "feeds"},
     ["rabbitmq_partition_handling=never", "rabbitmq_task_exchange=feeds"]),
]


# Cases refused by the same check task share one site.yml run, their
# overrides merged: a task names every rule it finds broken, on every host it
# runs on, in one message, and the preflight play stops at the first task
# that fails anywhere (any_errors_fatal). So only cases of one task, setting
# different variables that do not hide each other, can share a run; the other
# cases run alone. Each run is 12 to 17 s of CI's critical path.
SHARED_RUNS = [
    # firewall: the broker's AMQP allowlist
    ("cidr-not-a-network", "unknown-group"),
    # rabbitmq: the broker's settings
    ("api-user-not-an-administrator", "tls-between-brokers-without-tls", "task-exchange-named-as-a-queue",
     "two-broker-rules-at-once"),
    # celery: the settings the way Celery reads them, and the application's source
    ("app-directory-missing", "regex-does-not-compile", "crontab-out-of-range", "setting-celery-does-not-know",
     "negative-time-limit", "unknown-compression", "setting-read-as-another-type"),
    # rsyslog_server: the log server's settings
    ("log-program-name-with-a-slash", "log-sender-rate-too-low"),
]


@pytest.fixture(scope="module")
def converged():
    """The converged cluster's fingerprint, taken once before the first case."""
    return fingerprint()


@pytest.fixture
def untouched(converged):
    yield
    assert fingerprint() == converged, "a refused run changed a host"


@pytest.fixture(scope="module")
def refusal(converged):
    """refusal(case): the site.yml run of the case's run (SHARED_RUNS, or the
    case alone), run once, and whether every host was left as it was."""
    overrides = {case: values for case, values, _ in BAD_INPUT}
    runs = {}

    def run_of(case):
        cases = next((shared for shared in SHARED_RUNS if case in shared), (case,))
        if cases not in runs:
            merged = {}
            for name in cases:
                for key, value in overrides[name].items():
                    assert merged.setdefault(key, value) == value, f"{cases} set {key} twice"
            result = run_playbook("playbooks/site.yml", "--extra-vars", json.dumps(merged))
            runs[cases] = result, fingerprint() == converged
        return runs[cases]
    return run_of


def test_every_shared_run_names_cases_that_exist_once():
    shared = [case for cases in SHARED_RUNS for case in cases]
    assert len(shared) == len(set(shared)) and set(shared) <= {case for case, _, _ in BAD_INPUT}, shared


@pytest.mark.parametrize("case, overrides, words", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_in_preflight_naming_it(refusal, case, overrides, words):
    result, untouched_hosts = refusal(case)
    assert untouched_hosts, "a refused run changed a host"
    text = " ".join(result.stdout.split())
    assert result.returncode != 0, text[-1500:]
    for word in words:
        assert word in text, f"{case}: {word!r} not in {text[-1500:]}"
    refused_before_any_play(result)


# The worker's password is a template inside a rabbitmq_users entry; the
# client's is inside an entry that is itself a template.
@pytest.mark.parametrize("secret", ["vault_rabbitmq_worker_password", "vault_rabbitmq_client_password",
                                    "vault_flower_password"])
def test_an_undefined_vault_secret_is_refused_naming_it(untouched, secret):
    with open(os.environ["CLUSTER_SECRETS"], encoding="utf-8") as handle:
        secrets = yaml.safe_load(handle)
    del secrets[secret]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        yaml.safe_dump(secrets, handle)
    try:
        result = run_playbook("playbooks/site.yml", secrets_file=handle.name)
    finally:
        os.remove(handle.name)
    assert result.returncode != 0
    assert secret in result.stdout, result.stdout[-1500:]
    refused_before_any_play(result)


@contextlib.contextmanager
def looks_like_debian(name, version, codename):
    """Host `name` reports Debian `version` (/etc/os-release, /etc/debian_version) until the block ends."""
    box = host(name)
    box.check_output("cp --remove-destination /usr/lib/os-release /tmp/os-release.keep"
                     " && cp /etc/debian_version /tmp/debian_version.keep")
    box.check_output(f"rm -f /etc/os-release && sed 's/^VERSION_ID=.*/VERSION_ID=\"{version}\"/;"
                     f" s/^VERSION=.*/VERSION=\"{version} ({codename})\"/;"
                     f" s/^VERSION_CODENAME=.*/VERSION_CODENAME={codename}/' /tmp/os-release.keep > /etc/os-release"
                     f" && echo {version}.11 > /etc/debian_version")
    try:
        yield
    finally:
        box.check_output("rm -f /etc/os-release && ln -s ../usr/lib/os-release /etc/os-release"
                         " && cp /tmp/debian_version.keep /etc/debian_version")


def test_an_unsupported_operating_system_is_refused_naming_the_host(untouched):
    """The outsider, made to look like Debian 11 and put in celery_clients."""
    outsider = group("ungrouped")[0] if group("ungrouped") else "outsider"

    def add_outsider(data):
        groups = inventory_groups(data)
        for name in ("celery", "celery_clients"):  # molecule lists each group flat
            if name in groups:
                groups[name].setdefault("hosts", {})[outsider] = {"ansible_connection": "community.docker.docker"}

    inventory = variant("old-os", add_outsider)
    try:
        with looks_like_debian(outsider, 11, "bullseye"):
            result = run_playbook("playbooks/site.yml", inventory=inventory)
    finally:
        os.remove(inventory)
    text = " ".join(result.stdout.split())
    assert result.returncode != 0
    assert f"{outsider} runs Debian 11" in text, text[-1500:]
    assert "only Debian 12 (bookworm) and 13 (trixie) are supported" in text
    refused_before_any_play(result)


def test_a_broker_on_debian_12_is_refused_naming_the_host(untouched):
    """Debian 12's RabbitMQ 3.10 does not start with the role's configuration
    (seen in the lab with every host on bookworm): preflight says so first."""
    broker = group("rabbitmq")[0]
    with looks_like_debian(broker, 12, "bookworm"):
        result = run_playbook("playbooks/site.yml")
    text = " ".join(result.stdout.split())
    assert result.returncode != 0
    assert f"{broker} is a broker and runs Debian 12.11: the rabbitmq role needs Debian 13" in text, text[-1500:]
    refused_before_any_play(result)


# The only changes a dry run may predict on a deployed cluster: Ansible's
# pip module cannot tell in check mode whether a requirements file is
# satisfied (it reports it changed), so the virtual environments show as
# changed, and so do the restarts they would notify.
DRY_RUN_MAY_PREDICT = {
    "celery : Install Celery and the application into the virtual environment",
    "flower : Install Celery, the application and Flower into Flower's virtual environment",
    "service_health : Enable and start or restart the units",
    "celery_worker : Restart celery workers",
    "flower : Restart flower",
}


def _running_services():
    """Each managed host's running services, with when each last started."""
    return {name: host(name).run(
        "systemctl show --property=Id,MainPID,ActiveEnterTimestamp "
        "$(systemctl list-units --type=service --state=running --no-legend --plain | cut -d' ' -f1)").stdout
        for name in group("rabbitmq") + group("logserver") + group("celery")}


def test_a_dry_run_of_the_deployed_cluster_runs_through_and_changes_nothing():
    """`site.yml --check` on the deployed cluster (what an operator runs
    before a change): every play runs through, the reads it depends on run
    (they are marked check_mode: false), nothing changes on any host, no
    service restarts, and it predicts no change but the pip module's."""
    before, services = fingerprint(), _running_services()
    result = run_playbook("playbooks/site.yml", "--check")
    assert result.returncode == 0, result.stdout[-3000:]
    predicted, task = set(), None
    for line in result.stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line[line.index("[") + 1:line.rindex("]")]
        elif line.startswith("changed: ["):
            predicted.add(task)
    assert predicted <= DRY_RUN_MAY_PREDICT, sorted(predicted - DRY_RUN_MAY_PREDICT)
    assert fingerprint() == before
    assert _running_services() == services
