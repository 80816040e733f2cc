"""The production path (scripts/ssh-scenario.sh): this scenario's controller
is an unprivileged account without sudo, its hosts are reached over SSH as
`deploy` with sudo, host keys are checked against a recorded known_hosts,
and the firewall refuses, before any change, a list that would lock the
controller out."""
import hashlib
import os
import shutil
import subprocess
import tempfile

import pytest
from clusterlib import INVENTORY, PROJECT, group, host, inventory_vars, recap_changed, run_playbook

MANAGED = sorted(set(group("rabbitmq") + group("logserver") + group("celery")))
TABLE = "celery_filter"   # firewall_table
# The controller as every host sees it: the scenario network's gateway.
CONTROLLER = "172.28.90.1"
ADMIN_CIDRS = [f"{CONTROLLER}/32"]   # molecule.yml's firewall_admin_cidrs


def ssh_target(name):
    variables = inventory_vars(name)
    return variables["ansible_user"], variables["ansible_host"]


def fresh_ssh(name, *extra):
    """A brand-new SSH connection (no multiplexing) to the host, as deploy;
    returns the finished process."""
    user, address = ssh_target(name)
    return subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none",
                           "-o", "ConnectTimeout=10", *extra, f"{user}@{address}", "true"],
                          capture_output=True, text=True, timeout=60, check=False)


def flat(text):
    """The output with every run of white space made one space: the YAML
    callback folds long messages across lines."""
    return " ".join(text.split())


def run_linear(playbook, *extra):
    """run_playbook under Ansible's own linear strategy instead of Mitogen."""
    saved = os.environ.get("CLUSTER_ANSIBLE_STRATEGY")
    os.environ["CLUSTER_ANSIBLE_STRATEGY"] = "linear"
    try:
        return run_playbook(playbook, *extra)
    finally:
        if saved is None:
            os.environ.pop("CLUSTER_ANSIBLE_STRATEGY")
        else:
            os.environ["CLUSTER_ANSIBLE_STRATEGY"] = saved


def table_digests(names=MANAGED):
    return {name: hashlib.sha256(host(name).check_output("nft list table inet %s", TABLE).encode()).hexdigest()
            for name in names}


def test_the_controller_account_is_unprivileged():
    assert os.geteuid() != 0, "this scenario must run as the unprivileged controller account"
    sudo = shutil.which("sudo")
    if sudo:
        assert subprocess.run([sudo, "-n", "true"], capture_output=True, check=False).returncode != 0
    assert not os.access("/var/run/docker.sock", os.W_OK), "the controller account can drive Docker"


def test_hosts_are_reached_over_ssh_as_deploy_with_sudo():
    for name in MANAGED:
        variables = inventory_vars(name)
        assert variables["ansible_connection"] == "ssh", name
        assert variables["ansible_user"] == "deploy", name
        # The login is deploy's; every task runs as root through sudo.
        assert host(name).check_output("id -un") == "root", name
        assert host(name).check_output("printenv SUDO_USER") == "deploy", name


def test_every_host_key_is_recorded_and_checked():
    for name in MANAGED:
        _, address = ssh_target(name)
        found = subprocess.run(["ssh-keygen", "-F", address], capture_output=True, text=True, check=False)
        assert found.returncode == 0, f"no known_hosts entry for {name} ({address})"
        # A fresh connection with nothing but that file and strict checking.
        result = fresh_ssh(name, "-o", "StrictHostKeyChecking=yes")
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("strategy", ["mitogen_linear", "linear"])
def test_a_wrong_host_key_is_refused(strategy):
    """The same run with another host's key recorded for log-server's address
    is refused by both strategies: host keys are checked, not ignored."""
    server, other = group("logserver")[0], group("rabbitmq")[0]
    _, address = ssh_target(server)
    _, other_address = ssh_target(other)
    other_keys = subprocess.run(["ssh-keygen", "-F", other_address], capture_output=True, text=True,
                                check=True).stdout.splitlines()
    with tempfile.NamedTemporaryFile("w", suffix=".known_hosts") as known_hosts:
        for line in other_keys:
            if line and not line.startswith("#"):
                known_hosts.write(address + " " + line.split(" ", 1)[1] + "\n")
        known_hosts.flush()
        # No multiplexing: a master kept from an earlier run would skip the check.
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, "ansible.cfg"), ANSIBLE_STRATEGY=strategy,
                   ANSIBLE_SSH_ARGS="-o ControlMaster=no -o ControlPath=none",
                   ANSIBLE_SSH_COMMON_ARGS=f"-o UserKnownHostsFile={known_hosts.name}")
        result = subprocess.run(["ansible", "-i", INVENTORY, server, "-m", "ansible.builtin.ping"],
                                capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode != 0, result.stdout
    assert "UNREACHABLE" in result.stdout, result.stdout
    assert "host key" in (result.stdout + result.stderr).lower(), result.stdout


def test_a_list_without_the_controller_is_refused_before_any_change():
    before = table_digests()
    result = run_playbook("playbooks/firewall.yml", '--extra-vars={"firewall_admin_cidrs": ["192.0.2.0/24"]}')
    assert result.returncode != 0, result.stdout[-3000:]
    assert f"come from {CONTROLLER}," in flat(result.stdout) and "firewall_admin_cidrs" in result.stdout, result.stdout[-3000:]
    assert "Nothing was changed" in flat(result.stdout), result.stdout[-3000:]
    # The refusal comes before any change, on every host.
    assert "Render the main nftables file" not in result.stdout, result.stdout[-3000:]
    assert table_digests() == before
    for name in MANAGED:
        assert fresh_ssh(name).returncode == 0, name


def test_site_refuses_it_in_preflight():
    # site.yml's first play: every host checks before anything changes anywhere.
    result = run_playbook("playbooks/preflight.yml", '--extra-vars={"firewall_admin_cidrs": ["192.0.2.0/24"]}')
    assert result.returncode != 0, result.stdout[-3000:]
    assert f"come from {CONTROLLER}," in flat(result.stdout) and "firewall_admin_cidrs" in result.stdout, result.stdout[-3000:]
    assert "Nothing was changed" in flat(result.stdout), result.stdout[-3000:]


def test_a_changed_list_reloads_a_canary_first_and_every_host_stays_reachable():
    """A good change (one more admin network): the canary gets it alone and
    proves a new connection, then the rest do; afterwards a brand-new SSH
    connection opens to every host. Run under Ansible's linear strategy, so
    the production path is proven under both (converge used Mitogen)."""
    before = table_digests()
    wider = '--extra-vars={"firewall_admin_cidrs": ["%s", "192.0.2.0/24"]}' % ADMIN_CIDRS[0]
    result = run_linear("playbooks/firewall.yml", wider)
    try:
        assert result.returncode == 0, result.stdout[-4000:]
        changed = table_digests()
        assert all(changed[name] != before[name] for name in MANAGED), "the wider list did not reach every table"
        # One host alone first (the canary), then the others.
        batches = result.stdout.count("PLAY [Firewall base policy on every managed host, a canary first]")
        assert batches == 2, result.stdout[-4000:]
        assert result.stdout.count("TASK [firewall : Connect anew;") == 2, result.stdout[-4000:]
        for name in MANAGED:
            assert fresh_ssh(name).returncode == 0, name
    finally:
        restore = run_playbook("playbooks/firewall.yml")
        assert restore.returncode == 0, restore.stdout[-3000:]
    assert table_digests() == before
    again = run_playbook("playbooks/firewall.yml")
    for name in MANAGED:
        assert recap_changed(again, name) == 0


def test_linear_strategy_runs_the_controller_side_without_sudo_and_leaves_nothing_behind():
    """celery.yml under Ansible's linear strategy, from this unprivileged
    account, with `ansible_become: true` for all (which localhost inherits),
    changing one setting so that the configuration module is rewritten and
    checked (the template's validate runs only on a change): its
    controller-side tasks (the wheelhouse) must not try sudo on the
    controller, and no root-owned file is left in deploy's remote temporary
    directory (py_compile's root-owned __pycache__ once made Ansible fail to
    clean up). The next run, with the setting back, restores it."""
    changed = run_linear("playbooks/celery.yml", '--extra-vars={"celery_task_track_started": true}')
    try:
        assert changed.returncode == 0, changed.stdout[-4000:]
        assert "-> localhost" in changed.stdout, "no controller-side task ran"
        assert "Write the Celery configuration module" in changed.stdout
        # celery.yml writes the configuration of pools, beat and clients
        # (a Flower host gets it from monitoring.yml).
        for name in sorted(set(group("celery")) - set(group("flower"))):
            assert recap_changed(changed, name) > 0, name
        assert "Error deleting remote temporary files" not in changed.stdout + changed.stderr
        for name in group("celery"):
            tmp = "/home/deploy/.ansible/tmp"
            assert host(name).file(tmp).is_directory, f"{name}: no {tmp}"
            leftovers = host(name).check_output("find %s -user root", tmp)
            assert leftovers == "", f"{name}: {leftovers}"
    finally:
        restored = run_playbook("playbooks/celery.yml")
        assert restored.returncode == 0, restored.stdout[-3000:]
