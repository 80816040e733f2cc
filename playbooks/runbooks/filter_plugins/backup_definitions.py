"""Filters for restore.yml: which of a backup's broker definitions to import.

Written by hand: no maintained module imports RabbitMQ definitions
selectively. The broker play has already rebuilt, from the inventory, the
users it manages (with the vault's passwords) and the task topology, so the
archive supplies the rest: other users with their password hashes, vhosts,
permissions, policies, durable queues, exchanges and their bindings. What
Celery declares for itself while it runs (auto-delete pidbox and event
queues, rpc:// reply queues, non-durable exchanges) is not imported: the
services declare it again when they connect.
"""


def _durable(items):
    return [item for item in items if item.get("durable", True) and not item.get("auto_delete", False)]


def restorable_definitions(definitions, managed_users):
    """The part of exported definitions that restore.yml imports.

    managed_users: names the inventory manages (rabbitmq_users); their user
    entries and permissions are left to the broker play, so a backup taken
    before a password rotation cannot bring an old password back.
    """
    if not isinstance(definitions, dict) or "users" not in definitions:
        raise ValueError("not a RabbitMQ definitions export: no 'users' in it")
    managed = set(managed_users)
    queues = _durable(definitions.get("queues", []))
    exchanges = _durable(definitions.get("exchanges", []))
    kept = {("queue", q["vhost"], q["name"]) for q in queues} | {("exchange", e["vhost"], e["name"]) for e in exchanges}
    sources = {(e["vhost"], e["name"]) for e in exchanges}

    def bound(binding):
        source_ok = binding["source"] == "" or (binding["vhost"], binding["source"]) in sources \
            or binding["source"].startswith("amq.")
        return source_ok and (binding["destination_type"], binding["vhost"], binding["destination"]) in kept

    return {
        "users": [user for user in definitions.get("users", []) if user["name"] not in managed],
        "vhosts": definitions.get("vhosts", []),
        "permissions": [perm for perm in definitions.get("permissions", []) if perm["user"] not in managed],
        "topic_permissions": [perm for perm in definitions.get("topic_permissions", []) if perm["user"] not in managed],
        "parameters": definitions.get("parameters", []),
        "policies": definitions.get("policies", []),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": [binding for binding in definitions.get("bindings", []) if bound(binding)],
    }


class FilterModule:
    """restorable_definitions"""

    def filters(self):
        return {"restorable_definitions": restorable_definitions}
