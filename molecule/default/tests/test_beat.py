"""Exactly one beat; its entries fire on schedule, once per period, in the
configured time zone; its state is kept on disk."""
import re
from datetime import datetime

from clusterlib import beat_sent, group, host, wait_until

BEAT = group("celery_beat")[0]
HEARTBEAT = re.compile(r"heartbeat entry=(\w+) utc=(\S+) zone=(\S+) local=(\S+)")


def sent(since_seconds):
    """(unix time, entry name) of every entry beat sent in the window."""
    return beat_sent(BEAT, since_seconds)


def heartbeats(since_seconds):
    lines = []
    for worker in group("celery_workers"):
        out = host(worker).check_output(
            "journalctl --no-pager --output cat --unit 'celery-worker@*' --since=-%ss", str(since_seconds))
        lines += [m.groups() for m in map(HEARTBEAT.search, out.splitlines()) if m]
    return lines


def wait_for(predicate, seconds):
    return wait_until(predicate, seconds, interval=5)


def test_beat_runs_on_the_beat_host_only():
    for name in group("celery"):
        active = host(name).run("systemctl is-active celery-beat.service").stdout.strip()
        assert active == ("active" if name == BEAT else "inactive") or (name != BEAT and active in ("inactive", "unknown"))


def test_interval_entry_fires_every_period_exactly_once():
    assert wait_for(lambda: len([n for _, n in sent(60) if n == "heartbeat-every-10s"]) >= 5, 60)
    times = [t for t, n in sent(60) if n == "heartbeat-every-10s"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(9.0 <= gap <= 11.0 for gap in gaps), gaps
    # Each firing ran exactly once across every pool of the cluster.
    runs = [h for h in heartbeats(60) if h[0] == "interval"]
    assert abs(len(runs) - len(times)) <= 1, (len(runs), len(times))
    assert len({r[1] for r in runs}) == len(runs), "a firing ran twice"


def test_crontab_entry_fires_once_a_minute():
    assert wait_for(lambda: len([n for _, n in sent(150) if n == "heartbeat-every-minute"]) >= 2, 150)
    minutes = [int(t // 60) for t, n in sent(150) if n == "heartbeat-every-minute"]
    assert len(minutes) == len(set(minutes)), "two firings in one minute"
    assert all(b - a == 1 for a, b in zip(minutes, minutes[1:])), minutes


def test_periodic_tasks_run_in_the_configured_time_zone():
    assert wait_for(lambda: heartbeats(30), 30)
    _, utc, zone, local = heartbeats(30)[-1]
    assert zone == "Asia/Tehran"
    offset = datetime.fromisoformat(local).utcoffset()
    assert offset.total_seconds() == 3.5 * 3600, local    # +03:30, not UTC


def test_schedule_state_is_kept_on_disk():
    state = host(BEAT).file("/var/lib/celery/beat/schedule")
    assert state.exists and state.user == "celery"
