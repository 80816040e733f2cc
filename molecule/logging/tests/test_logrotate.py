"""The log server's logrotate configuration, run for real: a received file
rotates, rsyslog reopens its files (the postrotate HUP), the next line goes
to a new file with the log group's mode, and the older generation is
compressed one rotation later (delaycompress)."""
from clusterlib import host, inventory_vars
from logcheck import LOG_GROUP, REMOTE_DIR, SERVER, WORKER, remote_file, unique_tag, wait_for_text

LOGROTATE = "/etc/rsyslog-server-logrotate.conf"   # the role's __rsyslog_server_logrotate_file
UNIT = "rsyslog-server-logrotate"   # its timer runs the rotation (__rsyslog_server_logrotate_unit)


def test_a_received_file_rotates_and_the_next_line_goes_to_a_new_file():
    tag = unique_tag("rotate")
    host(WORKER).check_output("logger -t %s %s", tag, "before rotation")
    wait_for_text(WORKER, tag, "before rotation")
    path = remote_file(WORKER)
    server = host(SERVER)
    # The installed configuration covers the file (--debug changes nothing).
    plan = server.run("logrotate --debug --force %s", LOGROTATE)
    assert f"considering log {path}" in plan.stdout + plan.stderr, plan.stderr[-2000:]
    # Its directives, applied to this one file only: forcing every received
    # file would cut the files other tests of this scenario read.
    config = server.file(LOGROTATE).content_string
    pattern = f"{REMOTE_DIR}/*/*.log {{"
    assert pattern in config, config
    narrowed, state = "/root/logrotate-test.conf", "/root/logrotate-test.state"
    server.check_output("printf %s %s > %s", "%s", config.replace(pattern, f"{path} {{"), narrowed)
    try:
        server.check_output("logrotate --force --state %s %s", state, narrowed)
        assert "before rotation" in server.file(f"{path}.1").content_string
        host(WORKER).check_output("logger -t %s %s", tag, "after rotation")
        text = wait_for_text(WORKER, tag, "after rotation")
        assert "before rotation" not in text, text
        assert "after rotation" not in server.file(f"{path}.1").content_string
        current = server.file(path)
        assert (current.user, current.group, current.mode) == ("root", LOG_GROUP, 0o640)
        server.check_output("logrotate --force --state %s %s", state, narrowed)
        assert "before rotation" in server.check_output("zcat %s", f"{path}.2.gz")
        assert "after rotation" in server.file(f"{path}.1").content_string
    finally:
        server.run("rm -f %s %s", narrowed, state)


def test_a_file_above_maxsize_rotates_at_the_timers_next_run():
    # The worker's lines of unlisted programs (its catch-all file), grown
    # past rsyslog_server_logrotate_maxsize (a sparse hole: no disk used),
    # rotate at the timer's next run without --force, though the daily
    # schedule is not due. The run is started now instead of waited for.
    server = host(SERVER)
    assert server.service(f"{UNIT}.timer").is_enabled
    assert server.service(f"{UNIT}.timer").is_running
    # Not also in Debian's daily run, which would rotate every file twice.
    assert not server.file("/etc/logrotate.d/rsyslog-server").exists
    maxsize = inventory_vars(SERVER).get("rsyslog_server_logrotate_maxsize", "256M")
    tag = unique_tag("maxsize")
    host(WORKER).check_output("logger -t %s %s", tag, "before growing")
    wait_for_text(WORKER, tag, "before growing")
    path = remote_file(WORKER)
    server.check_output("truncate -s +%s %s && truncate -s +1M %s", maxsize, path, path)
    try:
        server.check_output("systemctl start %s.service", UNIT)
        assert server.run("grep -a -q -- 'before growing' %s.1", path).rc == 0, f"{path} was not rotated"
        host(WORKER).check_output("logger -t %s %s", tag, "after growing")
        text = wait_for_text(WORKER, tag, "after growing")
        assert "before growing" not in text, text
        assert server.file(path).size < 1024 * 1024
    finally:
        server.run("rm -f %s.1", path)
