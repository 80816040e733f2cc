"""A line logged on a host lands on the log server in <dir>/<host>/<program>.log,
readable by root and the log group only, under the sender's own name."""
import pytest
from clusterlib import group, host
from logcheck import (LOG_GROUP, PKI, REMOTE_DIR, SERVER, WORKER, relp_send, remote_file, remote_text, server_files_with,
                      unique_tag, wait_for_text)


def test_logger_line_on_worker_arrives_under_its_host_and_program():
    tag = unique_tag("delivery")
    host(WORKER).check_output("logger -t %s %s", tag, f"hello from {WORKER}")
    text = wait_for_text(WORKER, tag, f"hello from {WORKER}")
    lines = [line for line in text.splitlines() if f"hello from {WORKER}" in line]
    assert len(lines) == 1, text
    assert f" {tag}[" in lines[0] or f" {tag}:" in lines[0], lines[0]


@pytest.mark.parametrize("source", group("rabbitmq") + group("logserver") + group("celery"))
def test_every_managed_host_files_its_log_on_the_server(source):
    # The log server files its own log directly, the others send it.
    tag = unique_tag("every-host")
    host(source).check_output("logger -t %s %s", tag, f"hello from {source}")
    assert f"hello from {source}" in wait_for_text(source, tag, f"hello from {source}")


def test_received_logs_are_root_and_log_group_only():
    tag = unique_tag("modes")
    host(WORKER).check_output("logger -t %s modes", tag)
    wait_for_text(WORKER, tag, "modes")
    server = host(SERVER)
    for path, mode in [(REMOTE_DIR, 0o750), (f"{REMOTE_DIR}/{WORKER}", 0o750), (remote_file(WORKER), 0o640)]:
        item = server.file(path)
        assert (item.user, item.group, item.mode) == ("root", LOG_GROUP, mode), path
    # Nothing under the tree is writable by the group or readable by others.
    loose = server.check_output("find %s -perm /0027 -print", REMOTE_DIR)
    assert loose == ""


def test_log_group_is_a_restricted_system_group():
    group_entry = host(SERVER).group(LOG_GROUP)
    assert group_entry.exists
    assert group_entry.gid < 1000


def test_forged_hostname_and_tag_stay_inside_the_senders_directory():
    # A sender with a valid certificate writes a HOSTNAME and a tag that try to
    # leave the directory; the server files by the sending address instead.
    marker = unique_tag("forged")
    line = f"<13>Nov 25 10:00:00 ../../../../tmp/escape ../../{marker}: {marker}"
    answer = relp_send(WORKER, line, f"{PKI}/syslog.crt", f"{PKI}/syslog.key")
    assert answer["acked"], answer
    server = host(SERVER)
    files = []
    for _ in range(30):
        files = server_files_with(marker, REMOTE_DIR, "/tmp", "/var/log")
        if files:
            break
        server.run("sleep 1")
    assert files, "the forged line never arrived"
    assert all(path.startswith(f"{REMOTE_DIR}/{WORKER}/") for path in files), files
    assert server.run("find / -xdev -name escape -newer %s", REMOTE_DIR).stdout == ""


def test_forged_hostname_does_not_reach_another_hosts_directory():
    other = group("rabbitmq")[0] if group("rabbitmq") else SERVER
    marker = unique_tag("spoof")
    answer = relp_send(WORKER, f"<13>Nov 25 10:00:00 {other} {marker}: {marker}",
                       f"{PKI}/syslog.crt", f"{PKI}/syslog.key")
    assert answer["acked"], answer
    assert marker in wait_for_text(WORKER, marker, marker)
    assert remote_text(other, marker) == ""
