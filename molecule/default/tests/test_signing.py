"""Message signing and TLS, end to end through the real broker.

Every message below is published by the client host with its own broker
user, through the same code path: a raw protocol-2 task message for
web.tasks.mark(token), whose side effect is the file marks/<token> on the
worker that runs it. A correctly signed one is the positive control that
proves the path delivers; unsigned, tampered and foreign-signed ones must
leave no file, and the worker must go on consuming."""
import json
import time
import uuid

import pytest
from clusterlib import CELERY, amqp_session, celery_python, group, host, run_playbook, wait_marks, wait_until

CLIENT = group("celery_clients")[0]
WORKERS = group("celery_workers")
BROKER = group("rabbitmq")[0]
CELERY_HOSTS = group("celery")
MARKS = "/var/lib/celery/marks"
STORE = "/etc/celery/signers"
PKI = "/etc/celery-cluster/pki"

# Runs on the client with its Celery app (its key, its broker user).
_PUBLISH = r"""
import base64, datetime, json
from celery_cluster import app
from kombu.serialization import dumps
spec = json.loads(%r)
token, task_id = spec["token"], spec["id"]
body = [[token], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
headers = {"lang": "py", "task": "web.tasks.mark", "id": task_id, "root_id": task_id, "parent_id": None,
           "group": None, "argsrepr": repr((token,)), "kwargsrepr": "{}", "origin": "test", "retries": 0,
           "eta": None, "expires": None, "timelimit": [None, None], "shadow": None, "ignore_result": True}
kind = spec["kind"]
if kind == "replay":
    ctype, enc, payload = "application/data", "utf-8", spec["payload"]
elif kind == "unsigned":
    ctype, enc, payload = dumps(body, serializer="json")
elif kind in ("signed", "tampered"):
    ctype, enc, payload = dumps(body, serializer="auth")
    if kind == "tampered":  # the same signature over a body that names another token
        raw = base64.b64decode(payload).replace(token.encode(), spec["other"].encode())
        payload = base64.b64encode(raw).decode()
elif kind == "foreign":  # a valid signature by a key whose certificate no store holds
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    from celery.security.certificate import Certificate
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    serializer = SecureSerializer(PrivateKey(key_pem), Certificate(cert.public_bytes(serialization.Encoding.PEM).decode()),
                                  None, "sha256", "json")
    ctype, enc, payload = "application/data", "utf-8", serializer.serialize(body)
if not spec.get("sign_only"):
  with app.producer_or_acquire() as producer:
    producer.publish(payload, exchange=app.conf.task_default_exchange, routing_key="web", headers=headers,
                     content_type=ctype, content_encoding=enc, delivery_mode=2, retry=True)
print(json.dumps({"id": task_id, "payload": payload if isinstance(payload, str) else payload.decode()}))
"""


def publish(kind, token, **extra):
    spec = {"kind": kind, "token": token, "id": str(uuid.uuid4()), **extra}
    return celery_python(CLIENT, _PUBLISH % json.dumps(spec))


def new_token():
    return uuid.uuid4().hex


def marked(token):
    return [worker for worker in WORKERS if host(worker).file(f"{MARKS}/{token}").exists]


def wait_marked(token, deadline=60):
    return wait_until(lambda: marked(token), deadline, interval=1)


def test_a_signed_task_runs_and_its_signed_result_comes_back():
    token = new_token()
    result = celery_python(CLIENT, (
        "import json\nfrom celery_cluster import app\n"
        f"r = app.send_task('web.tasks.mark', [{token!r}])\n"
        "print(json.dumps(r.get(timeout=60)))"))
    assert result["token"] == token and result["routing_key"] == "web"
    assert marked(token) == [result["host"]]


def test_the_raw_path_delivers_a_correctly_signed_message():
    """Positive control for the refusals below: same publisher, same queue."""
    token = new_token()
    publish("signed", token)
    assert wait_marked(token), "a correctly signed raw message did not run: the refusal tests would prove nothing"


# What the worker logs when it refuses each kind. A tampered body fails the
# signature check; Celery 5.6 reports it as "Unable to deserialize:
# TypeError(...)" because its reraise_errors() names the cryptography module
# instead of an exception class, but the message is refused all the same.
REFUSAL = {"unsigned": "Refusing to deserialize untrusted content of type json",
           "foreign": "Unknown certificate",
           "tampered": "Unable to deserialize"}


@pytest.mark.parametrize("kind", sorted(REFUSAL))
def test_unsigned_foreign_or_tampered_messages_never_run(kind):
    token, other = new_token(), new_token()
    sent = publish(kind, token, other=other)
    # The worker goes on consuming: a signed message sent after it runs...
    control = new_token()
    publish("signed", control)
    assert wait_marked(control), f"the worker stopped consuming after a {kind} message"
    # ...and the refused one, queued first, reached a worker, which refused
    # it (not merely never delivered): its journal says so, near the token.
    worker = host(WORKERS[0])

    def refusal():
        lines = worker.check_output("journalctl --no-pager -o cat -u 'celery-worker@*' --since '-5min'").splitlines()
        return [i for i, line in enumerate(lines) if REFUSAL[kind] in line
                and any(token in near for near in lines[i:i + 40])]
    refused = wait_until(refusal, 30)
    assert marked(token) == [] and marked(other) == [], f"a {kind} message was executed"
    assert refused, f"no worker logged refusing the {kind} message {sent['id']} ({REFUSAL[kind]!r})"


def test_every_store_holds_each_celery_hosts_certificate_once():
    for name in CELERY_HOSTS:
        files = host(name).check_output("ls %s", STORE).split()
        signers = sorted(f.split("@", 1)[0] for f in files)
        assert signers == sorted(CELERY_HOSTS), f"{name}'s store: {files}"


def test_each_key_is_readable_by_root_and_the_celery_group_only():
    for name in CELERY_HOSTS:
        key = host(name).file(f"{PKI}/celery.key")
        assert (key.user, key.group, key.mode) == ("root", "celery", 0o640), name


def test_workers_use_tls_with_their_own_certificate():
    out = host(BROKER).check_output(
        "rabbitmqctl --quiet list_connections user ssl peer_cert_subject --formatter json")
    workers = [c for c in json.loads(out) if c["user"] == "celery_worker"]
    assert workers, "no worker connection"
    assert all(c["ssl"] for c in workers), workers
    subjects = " ".join(c["peer_cert_subject"] for c in workers)
    assert all(f"CN={w}" in subjects for w in WORKERS), subjects


def test_workers_verify_the_broker_certificate():
    worker = WORKERS[0]
    # The generated configuration requires a verified broker certificate...
    conf = celery_python(worker, (
        "import json, ssl\nfrom celery_cluster import app\n"
        "s = app.conf.broker_use_ssl\n"
        "print(json.dumps({'required': s['cert_reqs'] == ssl.CERT_REQUIRED, 'ca': s['ca_certs']}))"))
    assert conf == {"required": True, "ca": f"{PKI}/ca.crt"}
    # ...and a broker certificate from another CA is refused.
    refused = celery_python(worker, (
        "import json, ssl, tempfile, datetime\n"
        "from cryptography import x509\nfrom cryptography.hazmat.primitives import hashes, serialization\n"
        "from cryptography.hazmat.primitives.asymmetric import rsa\nfrom cryptography.x509.oid import NameOID\n"
        "from celery_cluster import app\n"
        "k = rsa.generate_private_key(public_exponent=65537, key_size=2048)\n"
        "n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'other-ca')])\n"
        "now = datetime.datetime.now(datetime.timezone.utc)\n"
        "c = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())"
        ".serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))"
        ".add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(k, hashes.SHA256()))\n"
        "f = tempfile.NamedTemporaryFile('wb', suffix='.pem', delete=False); f.write(c.public_bytes(serialization.Encoding.PEM)); f.close()\n"
        "ssl_options = dict(app.conf.broker_use_ssl, ca_certs=f.name)\n"
        "conn = app.connection_for_write(); conn.ssl = ssl_options\n"
        "try:\n    conn.ensure_connection(max_retries=1); print(json.dumps({'connected': True}))\n"
        "except Exception as e:\n    print(json.dumps({'connected': False, 'error': str(e)}))"))
    assert refused["connected"] is False and "CERTIFICATE_VERIFY_FAILED" in refused["error"], refused


def test_a_client_without_a_certificate_is_refused():
    with_cert = amqp_session(CLIENT, "celery_client", [], BROKER)
    assert with_cert["ok"], with_cert
    without = amqp_session(CLIENT, "celery_client", [], BROKER, certificate=None)
    assert not without["ok"], "the broker accepted a TLS client without a certificate"


def test_a_task_a_worker_sends_is_signed_by_that_worker_and_runs():
    token = new_token()
    sent = celery_python(CLIENT, (
        "import json\nfrom celery_cluster import app\n"
        f"app.send_task('feed.tasks.relay', [{token!r}], ignore_result=True)\n"
        "print(json.dumps(True))"))
    assert sent is True
    # The client sent feed.tasks.relay; the feeds pool sent web.tasks.mark, signed with its host's key.
    assert wait_marked(token), "the task a worker sent was not executed"


def test_rotation_loses_no_task_and_retires_the_old_certificates():
    before = {name: host(name).check_output("ls %s", STORE).split() for name in CELERY_HOSTS}
    # A message signed with today's key, kept to be sent once its certificate is retired.
    late = new_token()
    old = publish("signed", late, sign_only=True)
    # A producer publishing throughout the switch (it keeps the key it started with).
    client = host(CLIENT)
    client.check_output("rm -f /tmp/rotation.stop /tmp/rotation.tokens")
    loop = ("import time, os, uuid\nfrom celery_cluster import app\n"
            "out = open('/tmp/rotation.tokens', 'a', buffering=1)\n"
            "while not os.path.exists('/tmp/rotation.stop'):\n"
            "    t = uuid.uuid4().hex\n    app.send_task('web.tasks.mark', [t], ignore_result=True)\n"
            "    out.write(t + '\\n'); time.sleep(0.3)\n")
    client.check_output("(timeout 900 " + CELERY + " python -c %s > /tmp/rotation.log 2>&1 &)", loop)
    try:
        result = run_playbook("playbooks/runbooks/rotate-signing.yml",
                              '--extra-vars={"rotate_signing_phases": ["prepare"]}')
        assert result.returncode == 0, result.stdout[-3000:]
        # Before any host signs with a new key, every store trusts the old and the next certificate of every host.
        prepared = {name: host(name).check_output("ls %s", STORE).split() for name in CELERY_HOSTS}
        for name in CELERY_HOSTS:
            assert set(before[name]) <= set(prepared[name]), (name, before[name], prepared[name])
            assert len(prepared[name]) == 2 * len(CELERY_HOSTS), (name, prepared[name])
        result = run_playbook("playbooks/runbooks/rotate-signing.yml",
                              '--extra-vars={"rotate_signing_phases": ["switch"]}')
        assert result.returncode == 0, result.stdout[-3000:]
        # A producer started now signs with the new key, while the old key's are still accepted.
        switched = new_token()
        publish("signed", switched)
        assert wait_marked(switched), "a task signed with the new key did not run after the switch"
    finally:
        client.check_output("touch /tmp/rotation.stop")
    wait_until(lambda: client.run("pgrep -f '[r]otation.tokens'").rc != 0, 30, 1)   # the producer is done
    tokens = client.check_output("cat /tmp/rotation.tokens").split()
    assert len(tokens) >= 20, client.check_output("cat /tmp/rotation.log")
    missing = wait_marks(tokens, 120)
    assert not missing, f"{len(missing)} of {len(tokens)} tasks published during the rotation never ran"

    result = run_playbook("playbooks/runbooks/rotate-signing.yml",
                          '--extra-vars={"rotate_signing_phases": ["retire"], "rotate_signing_retire_after": 0}')
    assert result.returncode == 0, result.stdout[-3000:]
    after = {name: host(name).check_output("ls %s", STORE).split() for name in CELERY_HOSTS}
    for name in CELERY_HOSTS:
        assert len(after[name]) == len(CELERY_HOSTS) and not set(after[name]) & set(before[name]), (before, after)
    # New keys sign and verify; the old key's message is now refused.
    fresh = new_token()
    publish("signed", fresh)
    assert wait_marked(fresh)
    publish("replay", late, payload=old["payload"])
    control = new_token()
    publish("signed", control)
    assert wait_marked(control)
    time.sleep(3)
    assert marked(late) == [], "a message signed with a retired key was executed"
