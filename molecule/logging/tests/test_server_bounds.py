"""What one sender can cost the log server. A compromised cluster host keeps
its certificate, so it may send, but: the program names it invents make at
most one more file (the catch-all), its bytes are held to
rsyslog_server_sender_rate by the firewall, and meanwhile another host's
lines are neither late nor lost. Below the free-space floor, the log server
alerts."""
import threading
import time
import uuid

from clusterlib import group, host, inventory_vars, wait_until
from logcheck import (REMOTE_DIR, SERVER, count_on_server, relp_flood, remote_file, remote_text, unique_tag,
                      wait_for_text)

# The compromised sender, and a host whose lines must keep flowing.
FLOODER = group("flower")[0]
VICTIM = group("rabbitmq")[0]
LISTED_MAX = 64    # generous bound on the role's listed programs plus the pools'


def _files(source):
    return int(host(SERVER).check_output("find %s -maxdepth 1 -name '*.log' | wc -l", f"{REMOTE_DIR}/{source}"))


def _wait_count(marker, path, expected, deadline=120):
    return wait_until(lambda: count_on_server(marker, path), deadline, done=lambda got: got >= expected)


def test_thousands_of_program_names_make_one_more_file_and_lose_no_line():
    before = _files(FLOODER)
    marker = uuid.uuid4().hex
    sent = relp_flood(FLOODER, 3000, f"junk%d-{marker[:6]}", marker)
    assert sent["acked"] == 3000, sent
    assert _wait_count(marker, remote_file(FLOODER), 3000) == 3000
    after = _files(FLOODER)
    assert after <= before + 1, f"{after - before} new files under {REMOTE_DIR}/{FLOODER}"
    assert after <= LISTED_MAX


def test_a_flood_is_held_to_the_sender_rate_while_another_hosts_lines_arrive_on_time():
    settings = inventory_vars(SERVER)
    rate, burst = int(settings["rsyslog_server_sender_rate"]), int(settings["rsyslog_server_sender_burst"])
    assert rate > 0
    # Enough bytes to need at least 6 s at the rate once the burst is spent
    # (the wire carries more than the lines: TLS and TCP add to it).
    padding = 400
    count = (burst + 6 * rate) // padding + 1
    marker = uuid.uuid4().hex
    flood = {}
    sender = threading.Thread(target=lambda: flood.update(relp_flood(FLOODER, count, "flood", marker, padding)))
    sender.start()
    tag, delays = unique_tag("ontime"), []
    try:
        while sender.is_alive() or not delays:
            number = len(delays)
            logged = time.monotonic()
            host(VICTIM).check_output("logger -t %s %s", tag, f"tick {number} from {VICTIM}")
            text = wait_for_text(VICTIM, tag, f"tick {number} from {VICTIM}", deadline=30)
            assert f"tick {number} from {VICTIM}" in text, f"tick {number} not on the server after 30 s"
            delays.append(time.monotonic() - logged)
    finally:
        sender.join(600)
    assert flood.get("acked") == count, flood
    assert flood["seconds"] >= 6 * 0.9, f"{count} lines of {padding} bytes in {flood['seconds']:.1f} s: not rate-limited"
    assert _wait_count(marker, remote_file(FLOODER), count) == count
    # The victim's lines came through the flood: each within seconds.
    assert len(delays) >= 3, delays
    assert max(delays) < 15, [round(d, 1) for d in delays]


def test_the_log_server_alerts_below_its_free_space_floor():
    server = host(SERVER)
    floor = int(inventory_vars(SERVER).get("rsyslog_server_disk_floor_percent", 10))
    unit = "rsyslog-server-disk"
    assert server.service(f"{unit}.timer").is_enabled
    assert server.service(f"{unit}.timer").is_running
    alerts = remote_text(SERVER, unit).count("ALERT")
    # A small filesystem over the log directory, filled past the floor; the
    # real one is not filled. rsyslogd runs in a mount namespace of its own
    # (Debian's unit: ProtectSystem, PrivateTmp), so it keeps writing to the
    # real directory, where the alert lands; each run of the check starts in
    # a new namespace and sees the small one.
    server.check_output("mount -t tmpfs -o size=8m,mode=0750 tmpfs %s", REMOTE_DIR)
    try:
        server.check_output("fallocate -l %sk %s/filler", str(int(8192 * (1 - floor / 200))), REMOTE_DIR)
        server.check_output("systemctl start %s.service", unit)
        journal = wait_until(lambda: server.check_output("journalctl --no-pager -o cat -t %s --since=-60s", unit), 10)
    finally:
        server.run("umount %s", REMOTE_DIR)
    assert f"{REMOTE_DIR} has" in journal and f"below the floor of {floor}%" in journal, journal
    text = wait_until(lambda: (lines := remote_text(SERVER, unit)).count("ALERT") > alerts and lines, 60)
    assert text and f"below the floor of {floor}%" in text.split("ALERT")[-1], remote_text(SERVER, unit)
