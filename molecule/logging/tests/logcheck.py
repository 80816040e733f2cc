"""Helpers of the logging tests: numbered lines written on a host with
logger(1), read back from the log server, and a minimal RELP-over-TLS client
that runs on a host with a certificate of our choosing."""
import base64
import json
import re
import time
import uuid

from clusterlib import REMOTE_LOG_DIR as REMOTE_DIR
from clusterlib import group, host, remote_log, wait_for_remote_log

SERVER = group("logserver")[0]
WORKER = group("celery_workers")[0]
PORT = 6514
# librelp's default window: frames sent and not yet acknowledged (roles/rsyslog_client/README.md).
RELP_WINDOW = 128
SPOOL = "/var/spool/rsyslog"   # rsyslog_client_spool_dir
PKI = "/etc/celery-cluster/pki"
LOG_GROUP = "logadmin"   # rsyslog_server_log_group


def unique_tag(name):
    """A program tag no earlier run used (tags are file names on the server)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def remote_file(source, program):
    return f"{REMOTE_DIR}/{source}/{program}.log"


def remote_text(source, program):
    """Content of <source>/<program>.log on the log server ("" while absent)."""
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
    end = time.monotonic() + deadline
    while True:
        got = numbers(remote_text(source, tag), tag)
        if set(expected) <= set(got) or time.monotonic() > end:
            return got
        time.sleep(2)


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
