"""Helpers of the logging tests: numbered lines written on a host with
logger(1), read back from the log server, and a minimal RELP-over-TLS client
that runs on a host with a certificate of our choosing."""
import base64
import json
import re
import uuid

from clusterlib import REMOTE_LOG_DIR as REMOTE_DIR
from clusterlib import REMOTE_OTHER, group, host, remote_log, wait_for_remote_log, wait_until

SERVER = group("logserver")[0]
WORKER = group("celery_workers")[0]
PORT = 6514
# librelp's default window: frames sent and not yet acknowledged (roles/rsyslog_client/README.md).
RELP_WINDOW = 128
SPOOL = "/var/spool/rsyslog"   # rsyslog_client_spool_dir
PKI = "/etc/celery-cluster/pki"
LOG_GROUP = "logadmin"   # rsyslog_server_log_group


def unique_tag(name):
    """A program tag no earlier run used. The log server lists no such name:
    its lines go to the sender's catch-all file, <source>/_other.log."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def remote_file(source, program=REMOTE_OTHER):
    """The file of `program` on the log server; by default the catch-all."""
    return f"{REMOTE_DIR}/{source}/{program}.log"


def remote_text(source, program):
    """`program`'s lines from `source` on the log server ("" while none)."""
    return remote_log(source, program, SERVER)


def log_numbered(source, tag, first, last):
    """Log lines "<tag> seq <n>" for n in first..last on `source`, in order."""
    host(source).check_output(
        "f=$(mktemp) && seq %s %s | sed 's/^/%s seq /' > \"$f\" && logger -t %s -f \"$f\" && rm -f \"$f\"",
        str(first), str(last), tag, tag)


def numbers(text, tag):
    """The sequence numbers of tag's lines, in file order."""
    return [int(n) for n in re.findall(rf"{re.escape(tag)} seq (\d+)$", text, re.MULTILINE)]


def wait_for_numbers(source, tag, expected, deadline=120):
    """Poll the server until every number in `expected` arrived or the
    deadline passed; returns the numbers found, in file order."""
    return wait_until(lambda: numbers(remote_text(source, tag), tag), deadline, done=lambda got: set(expected) <= set(got))


def wait_for_text(source, program, needle, deadline=90):
    return wait_for_remote_log(source, program, needle, deadline)


def first_occurrences(got):
    seen, out = set(), []
    for n in got:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def rsyslog(name, action):
    host(name).check_output("systemctl %s rsyslog", action)


def rsyslog_active(name):
    return host(name).run("systemctl is-active rsyslog").stdout.strip() == "active"


# One RELP session over TLS (RELP: "<txnr> <command> <length> <data>\n"):
# open, one syslog frame, and the server's answer to it. The server's
# certificate is not checked: the probe plays a sender, not a victim.
_RELP = r"""
import base64, json, socket, ssl, sys
spec = json.loads(base64.b64decode(sys.argv[1]))
def frame(txnr, command, data):
    data = data.encode()
    return ("%d %s %d" % (txnr, command, len(data))).encode() + (b" " + data if data else b"") + b"\n"
result = {"acked": False}
try:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(spec["cert"], spec["key"])
    with socket.create_connection((spec["host"], spec["port"]), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=spec["host"]) as tls:
            tls.sendall(frame(1, "open", "relp_version=0\nrelp_software=probe\ncommands=syslog"))
            result["open"] = tls.recv(4096).decode(errors="replace")
            tls.sendall(frame(2, "syslog", spec["line"]))
            answer = tls.recv(4096).decode(errors="replace")
            result["answer"] = answer
            result["acked"] = answer.startswith("2 rsp ") and " 200 " in answer
except Exception as error:
    result["error"] = "%s: %s" % (type(error).__name__, error)
print(json.dumps(result))
"""


def _hidden(text):
    """`text` as it may appear on a command line run through sudo: sudo logs
    every command line, and those lines reach the log server too (sudo.log),
    so a marker written there in clear would be found by the very check that
    it never arrived."""
    return base64.b64encode(text.encode()).decode()


def relp_send(source, line, cert, key, target=None):
    """Send one syslog line over RELP/TLS from `source` presenting cert/key."""
    spec = {"host": target or SERVER, "port": PORT, "cert": cert, "key": key, "line": line}
    out = host(source).check_output("python3 -c %s %s", _RELP, _hidden(json.dumps(spec)))
    return json.loads(out.splitlines()[-1])


def server_files_with(marker, *paths):
    """The *.log files under `paths` on the log server that contain marker."""
    out = host(SERVER).run('m=$(echo %s | base64 -d) && grep -rl --include=*.log -- "$m" ' + " ".join(["%s"] * len(paths)),
                           _hidden(marker), *paths).stdout
    return sorted(set(out.split()))


# A sender that floods: one RELP session over TLS sending `count` syslog
# lines as fast as the server acknowledges them (up to RELP_WINDOW in
# flight), as a compromised host with its own certificate could. Each line
# is "<tag> <marker> seq <n> <padding>"; a tag holding "%d" takes n, so
# every line can carry another program name. Prints what was acknowledged
# and how long it took.
_FLOOD = r"""
import base64, json, re, socket, ssl, sys, time
spec = json.loads(base64.b64decode(sys.argv[1]))
window = spec["window"]
def frame(txnr, command, data):
    data = data.encode()
    return ("%d %s %d" % (txnr, command, len(data))).encode() + (b" " + data if data else b"") + b"\n"
def read_frame(tls, buf):
    while True:
        m = re.match(rb"(\d+) (\w+) (\d+)", buf)
        if m:
            n = int(m.group(3))
            start = m.end() + (1 if n else 0)
            if len(buf) >= start + n + 1:
                return (m.group(2).decode(), buf[start:start + n]), buf[start + n + 1:]
        chunk = tls.recv(65536)
        if not chunk:
            raise EOFError("the server closed the session")
        buf += chunk
def line(n):
    tag = spec["tag"] % n if "%d" in spec["tag"] else spec["tag"]
    stamp = time.strftime("%b %e %H:%M:%S")
    return "<13>%s %s %s: %s seq %d %s" % (stamp, spec["hostname"], tag, spec["marker"], n, "x" * spec["padding"])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.load_cert_chain(spec["cert"], spec["key"])
result = {"acked": 0}
started = time.monotonic()
try:
    with socket.create_connection((spec["host"], spec["port"]), timeout=120) as raw:
        with context.wrap_socket(raw, server_hostname=spec["host"]) as tls:
            tls.sendall(frame(1, "open", "relp_version=0\nrelp_software=flood\ncommands=syslog"))
            (command, data), buf = read_frame(tls, b"")
            txnr, sent, inflight = 2, 0, 0
            while result["acked"] < spec["count"]:
                batch = []
                while inflight < window and sent < spec["count"]:
                    batch.append(frame(txnr, "syslog", line(sent)))
                    txnr, sent, inflight = txnr + 1, sent + 1, inflight + 1
                if batch:
                    tls.sendall(b"".join(batch))
                (command, data), buf = read_frame(tls, buf)
                if command != "rsp" or not data.startswith(b"200"):
                    raise RuntimeError("refused: %r %r" % (command, data))
                result["acked"] += 1
                inflight -= 1
            tls.sendall(frame(txnr, "close", ""))
except Exception as error:
    result["error"] = "%s: %s" % (type(error).__name__, error)
result["seconds"] = time.monotonic() - started
print(json.dumps(result))
"""


def relp_flood(source, count, tag, marker, padding=0, cert=f"{PKI}/syslog.crt", key=f"{PKI}/syslog.key"):
    """Send `count` lines from `source` in one RELP session (see _FLOOD);
    returns {"acked": n, "seconds": s} and "error" if the session failed."""
    spec = {"host": SERVER, "port": PORT, "cert": cert, "key": key, "window": RELP_WINDOW, "count": count,
            "tag": tag, "marker": marker, "padding": padding, "hostname": source}
    out = host(source).check_output("python3 -c %s %s", _FLOOD, _hidden(json.dumps(spec)))
    return json.loads(out.splitlines()[-1])


def count_on_server(marker, path):
    """How many distinct "seq" numbers of `marker` lines `path` on the log server holds."""
    out = host(SERVER).check_output(
        'm=$(echo %s | base64 -d) && { grep -F -- "$m seq " %s || true; } | grep -o " seq [0-9]*" | sort -u | wc -l',
        _hidden(marker), path)
    return int(out.strip() or 0)
