"""Two server outages in a row, the client never restarted: no gap after the
second (the failure mode of plain TCP forwarding)."""
from logcheck import RELP_WINDOW, SERVER, WORKER, first_occurrences, log_numbered, remote_text, rsyslog, unique_tag, wait_for_numbers

BATCH = 200
# RELP is at-least-once: lines the server had acknowledged but whose
# acknowledgement the client had not read yet are sent again after the
# session breaks. That is at most one RELP window (128 frames) of the lines
# sent just before the outage, and each repeat is a byte-identical copy
# (the same frame sent again), so `awk '!seen[$0]++'` removes it.


def outage(tag, first, last):
    rsyslog(SERVER, "stop")
    try:
        log_numbered(WORKER, tag, first, last)
    finally:
        rsyslog(SERVER, "start")


def test_second_outage_without_client_restart_leaves_no_gap():
    tag = unique_tag("twice")
    outage(tag, 1, BATCH)
    got = wait_for_numbers(WORKER, tag, range(1, BATCH + 1))
    assert sorted(set(got)) == list(range(1, BATCH + 1)), "first outage lost lines"

    outage(tag, BATCH + 1, 2 * BATCH)
    expected = list(range(1, 2 * BATCH + 1))
    got = wait_for_numbers(WORKER, tag, expected)
    missing = sorted(set(expected) - set(got))
    assert missing == [], f"{len(missing)} lines lost after the second outage, first {missing[:10]}"
    assert first_occurrences(got) == expected, "lines arrived out of order"
    repeated = sorted({n for n in got if got.count(n) > 1})
    assert all(n <= BATCH for n in repeated), f"lines of the second batch repeated: {repeated}"
    assert len(repeated) <= RELP_WINDOW, f"{len(repeated)} lines repeated, more than one RELP window"
    lines = [line for line in remote_text(WORKER, tag).splitlines() if f"{tag} seq " in line]
    for number in repeated:
        copies = {line for line in lines if line.endswith(f"{tag} seq {number}")}
        assert len(copies) == 1, f"line {number} repeated with different content: {copies}"
