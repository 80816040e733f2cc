"""A restart of the sending host's rsyslog while the log server is down:
every line that was in the host's queue survives (the queue is on disk and
saved on shutdown).

What it can lose is bounded and documented (roles/rsyslog_client/README.md):
omrelp hands a line to librelp and counts it as done once it is *sent*; the
first lines sent into the session the stopped server left behind wait, unacknowledged,
in librelp's memory until the client notices the session is gone. They are
sent again when the session comes back, but a restart before that discards
them (rsyslog issues #2610 and #3820). So: at most one RELP window, and only
the first lines of the outage."""

from clusterlib import wait_until
from logcheck import (RELP_WINDOW, SERVER, SPOOL, WORKER, first_occurrences, host, log_numbered, remote_text, rsyslog,
                      unique_tag, wait_for_numbers)

BEFORE, AFTER = 300, 100


def in_disk_queue(name, line):
    """Whether `line` was written to a data file of the host's forwarding queue."""
    return host(name).run("grep -qsF -- %s %s/*.0*", line, SPOOL).rc == 0


def test_lines_queued_before_a_client_restart_still_arrive():
    tag = unique_tag("restart")
    rsyslog(SERVER, "stop")
    try:
        log_numbered(WORKER, tag, 1, BEFORE)
        # The restart must find the lines in the disk queue, or it proves nothing.
        last = f"{tag} seq {BEFORE}"
        assert wait_until(lambda: in_disk_queue(WORKER, last), 30, interval=0.5), \
            f"line {BEFORE} not in the disk queue with the server down"
        rsyslog(WORKER, "restart")
        log_numbered(WORKER, tag, BEFORE + 1, BEFORE + AFTER)
    finally:
        rsyslog(SERVER, "start")

    # Everything after the first window must arrive. Lines arrive in order, so
    # once those are there, any earlier line still to come has come.
    must = set(range(RELP_WINDOW + 1, BEFORE + AFTER + 1))
    got = wait_for_numbers(WORKER, tag, must)
    missing = sorted(set(range(1, BEFORE + AFTER + 1)) - set(got))

    assert not (must & set(missing)), f"queued lines lost: {sorted(must & set(missing))[:10]}"
    # Only a prefix of the outage's lines may be missing: the in-flight ones.
    assert missing == list(range(1, len(missing) + 1)), f"lost lines are not the first of the outage: {missing[:10]}"
    expected = list(range(len(missing) + 1, BEFORE + AFTER + 1))
    assert first_occurrences(got) == expected, "lines arrived out of order"
    # At-least-once: a line in flight when the session broke may come twice;
    # it is then a byte-identical copy.
    lines = [line for line in remote_text(WORKER, tag).splitlines() if f"{tag} seq " in line]
    for number in sorted({n for n in got if got.count(n) > 1}):
        copies = {line for line in lines if line.endswith(f"{tag} seq {number}")}
        assert len(copies) == 1, f"line {number} repeated with different content: {copies}"
    print(f"{len(missing)} of {BEFORE + AFTER} lines lost (in flight when the server stopped)")
