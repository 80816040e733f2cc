"""Lines queued while the log server is down survive a restart of the
sending host's rsyslog: the queue is on disk and saved on shutdown."""
from logcheck import SERVER, WORKER, first_occurrences, log_numbered, remote_text, rsyslog, unique_tag, wait_for_numbers

BEFORE, AFTER = 300, 100


def test_lines_queued_before_a_client_restart_still_arrive():
    tag = unique_tag("restart")
    rsyslog(SERVER, "stop")
    try:
        log_numbered(WORKER, tag, 1, BEFORE)
        # The client reads them from the journal into its queue; restart it.
        rsyslog(WORKER, "restart")
        log_numbered(WORKER, tag, BEFORE + 1, BEFORE + AFTER)
    finally:
        rsyslog(SERVER, "start")
    expected = list(range(1, BEFORE + AFTER + 1))
    got = wait_for_numbers(WORKER, tag, expected)
    missing = sorted(set(expected) - set(got))
    assert missing == [], f"{len(missing)} lines lost, first {missing[:10]}"
    assert first_occurrences(got) == expected, "lines arrived out of order"
    # At-least-once: the line that was in flight when the session broke may
    # come twice; it is then a byte-identical copy.
    lines = [line for line in remote_text(WORKER, tag).splitlines() if f"{tag} seq " in line]
    for number in sorted({n for n in got if got.count(n) > 1}):
        copies = {line for line in lines if line.endswith(f"{tag} seq {number}")}
        assert len(copies) == 1, f"line {number} repeated with different content: {copies}"
