"""Every managed host keeps its local log files, 0640 or stricter, and its
forwarding queue in a spool directory only root can read."""
import pytest
from clusterlib import group, host
from logcheck import SPOOL

MANAGED = group("rabbitmq") + group("logserver") + group("celery")


@pytest.mark.parametrize("name", MANAGED)
def test_local_log_files_are_0640_or_stricter(name):
    node = host(name)
    paths = [f"/var/log/{base}" for base in ("syslog", "auth.log", "user.log", "cron.log", "kern.log", "mail.log")]
    present = [path for path in paths if node.file(path).exists]
    assert "/var/log/syslog" in present
    for path in present:
        item = node.file(path)
        assert item.mode & 0o137 == 0, f"{path} is {oct(item.mode)}"
        assert item.user == "root"


@pytest.mark.parametrize("name", MANAGED)
def test_queue_spool_is_root_only(name):
    spool = host(name).file(SPOOL)
    assert (spool.user, spool.mode) == ("root", 0o700)


@pytest.mark.parametrize("name", MANAGED)
def test_journald_no_longer_feeds_the_syslog_socket(name):
    # rsyslog reads the journal itself: journald's socket hand-off drops lines.
    out = host(name).check_output("systemd-analyze cat-config systemd/journald.conf")
    settings = [line.strip() for line in out.splitlines() if line.strip().startswith("ForwardToSyslog=")]
    assert settings[-1] == "ForwardToSyslog=no"
