"""Private keys stay private: each host's keys are readable by root and the
one service that needs them, and the CA's key never leaves the controller."""
import pytest
from clusterlib import PKI, group, host

MANAGED = sorted(set(group("rabbitmq") + group("logserver") + group("celery")))


@pytest.mark.parametrize("name", MANAGED)
def test_no_private_key_is_readable_by_others(name):
    keys = host(name).check_output("find /etc/celery-cluster /etc/rabbitmq /etc/celery /etc/flower -name '*.key' 2>/dev/null || true").split()
    assert f"{PKI}/syslog.key" in keys, keys  # every managed host forwards its log over TLS
    for key in keys:
        mode = host(name).file(key).mode
        assert mode & 0o007 == 0, f"{name}:{key} is {oct(mode)}"
        assert host(name).file(key).user == "root" or host(name).file(key).user == "rabbitmq", key


# Every file on the host that holds a private key, and its public key next to the CA's.
_CA_KEY_SEARCH = r"""
ca=$(openssl x509 -in %s -noout -pubkey)
grep -rlI -e '-----BEGIN .*PRIVATE KEY-----' /etc /root /home /srv /var/lib /opt /usr/local /tmp 2>/dev/null | while read -r f; do
  pub=$(openssl pkey -in "$f" -pubout 2>/dev/null) || continue
  [ "$pub" = "$ca" ] && echo "CA KEY $f" || echo "key $f"
done
"""


@pytest.mark.parametrize("name", MANAGED)
def test_the_ca_private_key_is_on_no_managed_host(name):
    found = host(name).check_output("bash -c %s", _CA_KEY_SEARCH % f"{PKI}/ca.crt")
    assert "key " in found, "the search found no key at all: it would not find the CA's either"
    assert "CA KEY" not in found, found


@pytest.mark.parametrize("name", group("flower"))
def test_the_flower_key_is_for_flower_only(name):
    key = host(name).file(f"{PKI}/flower.key")
    assert key.exists and key.mode == 0o640 and key.user == "root" and key.group == "flower", (key.mode, key.user, key.group)
