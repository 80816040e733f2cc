"""Task families routed to their pools by name (feed, web, video, image),
tasks that exercise time limits, and the periodic heartbeat.

Every task reports where it ran, so tests can assert routing from the
worker's own account of it."""
import logging
import os
import socket
import time
from datetime import datetime, timezone

from celery.exceptions import SoftTimeLimitExceeded

from .app import app

logger = logging.getLogger("celery_example")


def _where(task, **extra):
    info = task.request.delivery_info or {}
    return {
        "task": task.name,
        "worker": task.request.hostname,
        "host": socket.gethostname(),
        "routing_key": info.get("routing_key"),
        "redelivered": bool(info.get("redelivered")),
        "started": time.time(),
        **extra,
    }


@app.task(name="feed.tasks.fetch", bind=True)
def fetch(self, n=0):
    return _where(self, n=n)


@app.task(name="web.tasks.render", bind=True)
def render(self, n=0):
    return _where(self, n=n)


@app.task(name="video.tasks.transcode", bind=True)
def transcode(self, n=0):
    return _where(self, n=n)


@app.task(name="image.tasks.thumbnail", bind=True)
def thumbnail(self, n=0):
    return _where(self, n=n)


@app.task(name="feed.tasks.sleep", bind=True)
def sleep(self, seconds):
    """Sleeps; reports a soft time limit instead of failing on it."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return _where(self, soft_time_limit=True)
    return _where(self, slept=seconds)


@app.task(name="feed.tasks.spin", bind=True)
def spin(self, seconds):
    """A runaway task: ignores the soft limit; only the hard limit stops it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            continue
    return _where(self, spun=seconds)


@app.task(name="web.tasks.heartbeat", bind=True, ignore_result=True)
def heartbeat(self, entry):
    """The periodic task: one log line per firing, in UTC and in the app's zone.

    Its result is ignored: beat never reads results, so with rpc:// they would
    pile up in beat's reply queue."""
    now = datetime.now(timezone.utc)
    logger.warning("heartbeat entry=%s utc=%s zone=%s local=%s", entry, now.isoformat(timespec="seconds"),
                   app.conf.timezone, app.now().isoformat(timespec="seconds"))
    return _where(self, entry=entry)


MARKS = "/var/lib/celery/marks"


@app.task(name="web.tasks.mark", bind=True)
def mark(self, token, seconds=0):
    """Leaves a file named after `token`: the side effect tests look for to
    tell whether a message was executed (after `seconds` of work, so that a
    test can catch tasks mid-run)."""
    if not token.isalnum():
        raise ValueError("token must be alphanumeric")
    time.sleep(min(float(seconds), 30))
    os.makedirs(MARKS, exist_ok=True)
    with open(os.path.join(MARKS, token), "w", encoding="ascii") as handle:
        handle.write(socket.gethostname())
    return _where(self, token=token)


@app.task(name="feed.tasks.relay", bind=True, ignore_result=True)
def relay(self, token):
    """A task that sends another (web.tasks.mark, to the web pool): the worker
    signs the follow-up with its own key, and the receiving pool verifies it."""
    mark.apply_async((token,), ignore_result=True)
    return _where(self, relayed=token)
