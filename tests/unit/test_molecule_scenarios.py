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
