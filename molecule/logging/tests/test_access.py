"""Only cluster hosts reach the RELP port, and only with a certificate of the
cluster CA that names a permitted host."""
import base64
import datetime
import os

import pytest
from clusterlib import INVENTORY, group, host, tcp_open
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from logcheck import PKI, PORT, REMOTE_DIR, SERVER, WORKER, relp_send, server_files_with, unique_tag, wait_for_text

OUTSIDER = "log-outsider" if "log-outsider" in group("all") else "outsider"


def test_outsider_cannot_reach_the_relp_port():
    is_open, detail = tcp_open(OUTSIDER, SERVER, PORT)
    assert not is_open, f"{OUTSIDER} reached {SERVER}:{PORT} ({detail})"


def test_worker_reaches_the_relp_port():
    # Positive control of the test above: the same probe does connect.
    is_open, detail = tcp_open(WORKER, SERVER, PORT)
    assert is_open, detail


@pytest.mark.parametrize("port", [514, 22])
def test_worker_reaches_no_other_port_of_the_server(port):
    # Senders have no way in but RELP: the firewall drops the rest (a timeout,
    # not a refusal), the loopback syslog listener included.
    is_open, detail = tcp_open(WORKER, SERVER, port)
    assert not is_open, f"{WORKER} reached {SERVER}:{port} ({detail})"
    assert "timed out" in detail or "Timeout" in detail, detail


def test_loopback_syslog_listeners_answer_on_loopback_only():
    # RabbitMQ's syslog goes to 127.0.0.1:514; nothing else listens there.
    server = host(SERVER)
    assert server.socket("tcp://127.0.0.1:514").is_listening
    assert server.socket("udp://127.0.0.1:514").is_listening
    assert not server.socket("tcp://0.0.0.0:514").is_listening
    assert not server.socket("udp://0.0.0.0:514").is_listening


def test_relp_port_is_opened_on_the_log_server_only():
    assert host(SERVER).socket(f"tcp://0.0.0.0:{PORT}").is_listening
    for name in group("rabbitmq") + group("celery"):
        assert not host(name).socket(f"tcp://0.0.0.0:{PORT}").is_listening, name


def _send_and_control(cert, key, marker):
    """Send `marker` with cert/key, then a control line with the real
    certificate; once the control arrived, the marker would have too."""
    answer = relp_send(WORKER, f"<13>Nov 25 10:00:00 {WORKER} probe: {marker}", cert, key)
    control = unique_tag("control")
    good = relp_send(WORKER, f"<13>Nov 25 10:00:00 {WORKER} probe: {control}",
                     f"{PKI}/syslog.crt", f"{PKI}/syslog.key")
    assert good["acked"], good
    text = wait_for_text(WORKER, "probe", control)
    assert control in text, "the control line with the host's real certificate never arrived"
    return answer, text


def test_self_signed_certificate_cannot_deliver_a_line():
    worker = host(WORKER)
    worker.check_output(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -keyout /root/rogue.key -out /root/rogue.crt "
        "-subj /CN=%s -addext subjectAltName=DNS:%s", WORKER, WORKER)
    marker = unique_tag("rogue")
    answer, text = _send_and_control("/root/rogue.crt", "/root/rogue.key", marker)
    assert not answer["acked"], answer
    assert marker not in text
    assert server_files_with(marker, REMOTE_DIR) == []


def _ca_signed(common_name):
    """A certificate of the cluster CA (on the controller) for a name that is
    not a permitted peer."""
    pki = os.path.join(os.path.dirname(INVENTORY), ".pki")
    with open(os.path.join(pki, "ca.key"), "rb") as handle:
        ca_key = serialization.load_pem_private_key(handle.read(), password=None)
    with open(os.path.join(pki, "ca.crt"), "rb") as handle:
        ca_cert = x509.load_pem_x509_certificate(handle.read())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_cluster_certificate_for_an_unlisted_name_cannot_deliver_a_line():
    cert, key = _ca_signed("intruder.invalid")
    worker = host(WORKER)
    for path, data, mode in [("/root/intruder.crt", cert, "0644"), ("/root/intruder.key", key, "0600")]:
        worker.check_output("echo %s | base64 -d > %s && chmod %s %s",
                            base64.b64encode(data).decode(), path, mode, path)
    marker = unique_tag("intruder")
    answer, text = _send_and_control("/root/intruder.crt", "/root/intruder.key", marker)
    assert not answer["acked"], answer
    assert marker not in text
    assert server_files_with(marker, REMOTE_DIR) == []
