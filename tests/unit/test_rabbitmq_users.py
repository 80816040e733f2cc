"""The users the management API refused are imported from a definitions
file of salted password hashes (roles/rabbitmq/filter_plugins): the hash
must be the one RabbitMQ computes, and only refused users are in it."""
import base64
import hashlib
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("rabbitmq_users", ROOT / "roles/rabbitmq/filter_plugins/rabbitmq_users.py")
users = importlib.util.module_from_spec(spec)
spec.loader.exec_module(users)


def test_the_hash_is_rabbitmqs_salted_sha256():
    # RabbitMQ's documented algorithm (rabbit_password_hashing_sha256):
    # base64(salt ++ sha256(salt ++ password)), with a 4-byte salt.
    salt = bytes.fromhex("908dc60a")
    expected = base64.b64encode(salt + hashlib.sha256(salt + "test12".encode()).digest()).decode()
    assert users.rabbitmq_password_hash("test12", salt) == expected
    decoded = base64.b64decode(users.rabbitmq_password_hash("pässwörd \"'"))
    assert len(decoded) == 36 and decoded[4:] == hashlib.sha256(decoded[:4] + "pässwörd \"'".encode()).digest()


def test_each_hash_has_its_own_salt():
    assert users.rabbitmq_password_hash("same") != users.rabbitmq_password_hash("same")


def test_only_refused_users_are_imported_with_their_tags_and_no_password():
    results = [
        {"status": 200, "json": {"name": "admin"}, "item": {"name": "admin", "password": "a" * 20, "tags": ["administrator"]}},
        {"status": 401, "json": {"reason": "Not management user"}, "item": {"name": "worker", "password": "w" * 20}},
        {"status": 401, "json": {"reason": "Login failed"}, "item": {"name": "client", "password": "c" * 20, "tags": []}},
        {"status": 401, "item": {"name": "new", "password": "n" * 20, "tags": ["monitoring"]}},
    ]
    refused = users.rabbitmq_refused_users(results)
    assert [user["name"] for user in refused] == ["client", "new"]
    document = users.rabbitmq_users_definitions(refused)
    assert [(u["name"], u["tags"], u["hashing_algorithm"]) for u in document["users"]] == [
        ("client", [], "rabbit_password_hashing_sha256"), ("new", ["monitoring"], "rabbit_password_hashing_sha256")]
    assert "c" * 20 not in str(document) and "n" * 20 not in str(document)
