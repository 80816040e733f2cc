"""Filters for the users the management API refused (roles/rabbitmq/tasks/access.yml).

A refused user (new, or its password changed) is set from a definitions
file that `rabbitmqctl import_definitions` reads, holding a salted hash of
the password: no password ever appears on a command line, where `ps` would
show it. Written by hand because community.rabbitmq's rabbitmq_user passes
the password to `rabbitmqctl add_user`/`change_password` as an argument and
its API mode fails on every password change (community.rabbitmq#217).
"""
import base64
import hashlib
import os

# RabbitMQ's default (rabbit_password_hashing_sha256): base64 of a 4-byte
# salt followed by SHA-256(salt + UTF-8 password).
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


def rabbitmq_password_hash(password, salt=None):
    salt = os.urandom(4) if salt is None else bytes(salt)
    return base64.b64encode(salt + hashlib.sha256(salt + str(password).encode("utf-8")).digest()).decode("ascii")


def rabbitmq_refused_users(results):
    """The users (the loop items) whose /api/whoami check was refused: not
    200, and not the 401 "Not management user" a right password without a
    management tag gets."""
    refused = []
    for result in results or []:
        reason = (result.get("json") or {}).get("reason", "") if isinstance(result.get("json"), dict) else ""
        if result.get("status") != 200 and reason != "Not management user":
            refused.append(result["item"])
    return refused


def rabbitmq_users_definitions(users):
    """A definitions document with each user, its tags and a salted hash."""
    return {"users": [{"name": user["name"], "password_hash": rabbitmq_password_hash(user["password"]),
                       "hashing_algorithm": HASHING_ALGORITHM, "tags": list(user.get("tags") or []), "limits": {}}
                      for user in users]}


class FilterModule:
    def filters(self):
        return {
            "rabbitmq_password_hash": rabbitmq_password_hash,
            "rabbitmq_refused_users": rabbitmq_refused_users,
            "rabbitmq_users_definitions": rabbitmq_users_definitions,
        }
