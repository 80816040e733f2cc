"""While the log server is down, a host keeps its lines queued on disk: when
the server comes back, all of them arrive, once each, in order.

(RELP is at-least-once: a later outage may resend the last lines a host sent
before it, see test_two_outages.py; this test reads its lines right away.)"""
from logcheck import SERVER, WORKER, first_occurrences, log_numbered, rsyslog, rsyslog_active, unique_tag, wait_for_numbers

COUNT = 1000


def test_thousand_lines_logged_during_a_server_outage_all_arrive_once_in_order():
    tag = unique_tag("outage")
    rsyslog(SERVER, "stop")
    try:
        assert not rsyslog_active(SERVER)
        log_numbered(WORKER, tag, 1, COUNT)
        assert not rsyslog_active(SERVER), "something started the log server during the outage"
    finally:
        rsyslog(SERVER, "start")
    got = wait_for_numbers(WORKER, tag, range(1, COUNT + 1))
    missing = sorted(set(range(1, COUNT + 1)) - set(got))
    assert missing == [], f"{len(missing)} lines lost, first {missing[:10]}"
    assert len(got) == COUNT, f"{len(got) - COUNT} lines arrived twice"
    assert got == sorted(got), "lines arrived out of order"
    assert first_occurrences(got) == list(range(1, COUNT + 1))
