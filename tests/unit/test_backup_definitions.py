"""restore.yml imports from a backup only what the broker play does not
rebuild from the inventory (playbooks/runbooks/filter_plugins)."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "backup_definitions", ROOT / "playbooks/runbooks/filter_plugins/backup_definitions.py")
backup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backup)

# The shape of `rabbitmqctl export_definitions` (RabbitMQ 4.0), trimmed.
EXPORT = {
    "rabbit_version": "4.0.5",
    "users": [
        {"name": "celery_worker", "password_hash": "OLD", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []},
        {"name": "reporting", "password_hash": "KEEP", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []},
    ],
    "vhosts": [{"name": "celery"}],
    "permissions": [
        {"user": "celery_worker", "vhost": "celery", "configure": ".*", "write": ".*", "read": ".*"},
        {"user": "reporting", "vhost": "celery", "configure": "^$", "write": "^$", "read": "^reports$"},
    ],
    "topic_permissions": [],
    "parameters": [],
    "global_parameters": [{"name": "internal_cluster_id", "value": "rabbitmq-cluster-id-OLD"}],
    "policies": [{"vhost": "celery", "name": "reports-ttl", "pattern": "^reports$", "definition": {"message-ttl": 60000}}],
    "queues": [
        {"name": "feeds", "vhost": "celery", "durable": True, "auto_delete": False, "arguments": {"x-queue-type": "quorum"}},
        {"name": "reports", "vhost": "celery", "durable": True, "auto_delete": False, "arguments": {"x-queue-type": "quorum"}},
        {"name": "celery@worker1.celery.pidbox", "vhost": "celery", "durable": False, "auto_delete": True, "arguments": {}},
        {"name": "celeryev.5b1c", "vhost": "celery", "durable": False, "auto_delete": True, "arguments": {}},
    ],
    "exchanges": [
        {"name": "celery.tasks", "vhost": "celery", "type": "topic", "durable": True, "auto_delete": False},
        {"name": "celery.pidbox", "vhost": "celery", "type": "fanout", "durable": False, "auto_delete": False},
    ],
    "bindings": [
        {"source": "celery.tasks", "vhost": "celery", "destination": "feeds", "destination_type": "queue", "routing_key": "feeds"},
        {"source": "celery.tasks", "vhost": "celery", "destination": "reports", "destination_type": "queue", "routing_key": "reports"},
        {"source": "celery.pidbox", "vhost": "celery", "destination": "celery@worker1.celery.pidbox",
         "destination_type": "queue", "routing_key": ""},
    ],
}


def test_users_the_inventory_manages_keep_the_vaults_password():
    kept = backup.restorable_definitions(EXPORT, ["celery_worker", "admin"])
    assert [user["name"] for user in kept["users"]] == ["reporting"]
    assert kept["users"][0]["password_hash"] == "KEEP"
    assert [perm["user"] for perm in kept["permissions"]] == ["reporting"]


def test_durable_topology_and_policies_come_back_and_what_celery_declares_does_not():
    kept = backup.restorable_definitions(EXPORT, [])
    assert [queue["name"] for queue in kept["queues"]] == ["feeds", "reports"]
    assert [exchange["name"] for exchange in kept["exchanges"]] == ["celery.tasks"]
    assert [binding["destination"] for binding in kept["bindings"]] == ["feeds", "reports"]
    assert kept["policies"] == EXPORT["policies"] and kept["vhosts"] == EXPORT["vhosts"]
    # The old cluster's identity is not carried into the new one.
    assert "global_parameters" not in kept


def test_a_file_that_is_not_a_definitions_export_is_refused():
    with pytest.raises(ValueError, match="not a RabbitMQ definitions export"):
        backup.restorable_definitions({"queues": []}, [])
