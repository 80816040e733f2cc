"""Beat's schedule state as data (celery_beat role; move-beat.yml).

Celery beat keeps, per schedule entry, when it last ran and how often, in a
shelve file: pickles, which run code when they are read. Moved as is, the
new beat host would run whatever the previous host (or whoever broke into
it) put there. So the state travels as JSON, and each host reads only a
shelve its own beat or this script wrote:

    python beat_state.py export SCHEDULE      prints the state as JSON
    python beat_state.py import JSON SCHEDULE  writes a new SCHEDULE from it

`export` runs on the previous beat host, as the celery user, and reads that
host's own file. `import` runs on the new host, as the celery user, with
the cluster's app and configuration (PYTHONPATH=/etc/celery): it never
opens the existing SCHEDULE, checks every value (a name, an ISO 8601 time
with its zone, a count), writes a new shelve with the cluster's time zone
and one entry per name holding only its last run and count (beat, when it
starts, takes each entry's task, schedule and arguments from its own
configuration and drops names it does not have), and replaces SCHEDULE only
when all of that worked. Written by hand: Celery has no export of its
schedule state.
"""
import datetime
import glob
import json
import os
import shelve
import sys
import tempfile

LIMIT = 1 << 20   # bytes of JSON accepted: the state of a few thousand entries


def export(schedule):
    store = shelve.open(schedule, flag="r")
    try:
        entries = store["entries"]
        state = {"version": 1, "tz": store.get("tz"), "entries": {}}
        for name, entry in entries.items():
            last = entry.last_run_at
            state["entries"][str(name)] = {
                "last_run_at": last.isoformat() if last else None,
                "total_run_count": int(entry.total_run_count or 0),
            }
    finally:
        store.close()
    print(json.dumps(state, sort_keys=True))


def _checked(text):
    """The state, or SystemExit naming what is wrong."""
    if len(text) > LIMIT:
        sys.exit(f"beat state: {len(text)} bytes, more than {LIMIT}")
    state = json.loads(text)
    if not isinstance(state, dict) or state.get("version") != 1 or not isinstance(state.get("entries"), dict):
        sys.exit("beat state: not a version 1 state document")
    checked = {}
    for name, entry in state["entries"].items():
        if not isinstance(entry, dict) or set(entry) - {"last_run_at", "total_run_count"}:
            sys.exit(f"beat state: entry {name!r} is not a mapping of last_run_at and total_run_count")
        last, count = entry.get("last_run_at"), entry.get("total_run_count", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            sys.exit(f"beat state: entry {name!r} has total_run_count {count!r}")
        if last is not None:
            last = datetime.datetime.fromisoformat(last)
            if last.tzinfo is None:
                sys.exit(f"beat state: entry {name!r} has a last_run_at without a time zone")
        checked[name] = (last, count)
    return checked


def import_(source, schedule):
    from celery.beat import PersistentScheduler, ScheduleEntry
    from celery_cluster import app

    with open(source, encoding="utf-8") as handle:
        state = _checked(handle.read())
    directory = os.path.dirname(os.path.abspath(schedule))
    scratch = tempfile.mkdtemp(prefix=".import-", dir=directory)
    try:
        fresh = os.path.join(scratch, "schedule")
        scheduler = PersistentScheduler(app, schedule_filename=fresh, lazy=False)
        for name, (last, count) in state.items():
            entry = scheduler.schedule.get(name) or ScheduleEntry(
                name=name, task=name, schedule=datetime.timedelta(days=1), app=app)
            entry.last_run_at, entry.total_run_count = last, count
            scheduler.schedule[name] = entry
        scheduler.sync()
        scheduler.close()
        for path in glob.glob(fresh + "*"):
            os.replace(path, schedule + path[len(fresh):])
    finally:
        for path in glob.glob(os.path.join(scratch, "*")):
            os.remove(path)
        os.rmdir(scratch)
    print(json.dumps({"entries": len(state)}))


def main(argv):
    if len(argv) == 3 and argv[1] == "export":
        export(argv[2])
    elif len(argv) == 4 and argv[1] == "import":
        import_(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
