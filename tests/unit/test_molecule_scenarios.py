"""The molecule scenarios can run at the same time (scripts/molecule-scenarios.sh
overlaps them): container names and networks are global to the Docker engine,
so no two scenarios may share one, or one scenario's destroy removes the
other's hosts mid-test."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "molecule").glob("*/molecule.yml"))


def platforms():
    return {path.parent.name: yaml.safe_load(path.read_text())["platforms"] for path in SCENARIOS}


def test_there_are_scenarios():
    assert {"default", "broker_cluster", "logging"} <= set(platforms())


def test_no_two_scenarios_share_a_container_name():
    seen = {}
    for scenario, hosts in platforms().items():
        for host in hosts:
            assert host["name"] not in seen, f"{host['name']} is in {seen.get(host['name'])} and {scenario}"
            seen[host["name"]] = scenario


def test_no_two_scenarios_share_a_network_or_subnet():
    names, subnets = {}, {}
    for scenario, hosts in platforms().items():
        for network in {n["name"]: n for h in hosts for n in h.get("docker_networks", [])}.values():
            assert names.setdefault(network["name"], scenario) == scenario, f"network {network['name']} shared"
            for ipam in network.get("ipam_config", []):
                assert subnets.setdefault(ipam["subnet"], scenario) == scenario, f"subnet {ipam['subnet']} shared"


def test_a_scenario_with_its_own_group_vars_links_every_project_file():
    """A scenario that adds connection settings (logging: group_vars/all/ssh.yml)
    has its own group_vars directory; it must still load every file of the
    project's group_vars, or the scenario would test another cluster."""
    project = ROOT / "group_vars"
    wanted = {p.relative_to(project) for p in project.rglob("*.yml")}
    for path in SCENARIOS:
        own = path.parent / "group_vars"
        if not own.is_dir():
            continue
        for relative in wanted:
            link = own / relative
            assert link.is_symlink() and link.resolve() == (project / relative).resolve(), \
                f"{path.parent.name}: {link} must link to group_vars/{relative}"


def test_ssh_scenarios_name_a_fixed_address_for_every_host():
    """An unmanaged (SSH) scenario's inventory names each host's address, as an
    operator's does, and the container gets that address."""
    for path in SCENARIOS:
        config = yaml.safe_load(path.read_text())
        if config.get("driver", {}).get("options", {}).get("managed", True) is not False:
            continue
        for platform in config["platforms"]:
            host_vars = yaml.safe_load((path.parent / "host_vars" / f"{platform['name']}.yml").read_text())
            assert [n["ipv4_address"] for n in platform["networks"]] == [host_vars["ansible_host"]], platform["name"]
