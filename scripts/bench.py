#!/usr/bin/env python3
"""`make bench`: what a deploy and the deployed cluster cost, on this machine.

Runs against the local lab (inventory/lab), from fresh containers, and
prints and writes bench/results.json, bench/results.md and bench/results.png:

1. converge of the whole lab from fresh containers (site.yml), against the
   package floor: the same Debian and Python packages installed on the same
   hosts, from fresh containers, with plain apt-get and pip (in parallel);
2. a second converge with nothing to change: wall time and changed count;
3. end-to-end throughput of trivial tasks published by the client host and
   run by the pools, with `auth` signing and with `json`, p50/p99 latency,
   and a raw AMQP publish/consume rate from the same host;
4. beat lateness: each firing of the every-minute crontab entry against its
   minute, and each interval firing against the previous one plus 10 s;
5. resident memory of each worker pool, idle and under load.

The lab is left deployed (signing on). Figures, not pass/fail: the targets
are printed beside them.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench"
INVENTORY = ROOT / "inventory/lab"
SECRETS = ROOT / ".lab/secrets.yml"
ENV = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
           PATH=f"{ROOT / '.venv/bin'}:{os.environ['PATH']}")
CELERY = ["runuser", "-u", "celery", "--", "env", "PYTHONPATH=/etc/celery", "CELERY_CONFIG_MODULE=celeryconfig",
          "/opt/celery/venv/bin/python", "-c"]
FAMILIES = ["feed.tasks.fetch", "web.tasks.render", "video.tasks.transcode"]  # thumbnail is rate limited
JSON_VARS = {"celery_task_serializer": "json", "celery_accept_content": ["json"],
             "celery_event_serializer": "json", "celery_result_serializer": "json"}
TARGETS = {"second_converge_s": 20, "converge_floor_ratio": 1.5, "signed_unsigned_ratio": 0.7, "beat_p99_s": 1.0}


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(argv, **kwargs):
    return subprocess.run(argv, cwd=ROOT, env=ENV, text=True, capture_output=True, check=False, **kwargs)


def must(argv, **kwargs):
    result = run(argv, **kwargs)
    if result.returncode != 0:
        # The failure itself first: an Ansible run's tail is its profile and recap.
        lines = result.stdout.splitlines()
        failed = [f"{lines[i - 1]}\n" + "\n".join(lines[i:i + 12]) for i, line in enumerate(lines)
                  if line.startswith(("fatal:", "failed:")) and i > 0]
        sys.exit(f"bench: {' '.join(map(str, argv))} failed:\n" + "\n".join(failed[:5])
                 + f"\n...\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def timed(argv):
    start = time.monotonic()
    out = must(argv)
    return time.monotonic() - start, out


def inventory():
    data = json.loads(must(["ansible-inventory", "-i", str(INVENTORY), "--list"]))
    hostvars = data["_meta"]["hostvars"]
    groups = {name: value.get("hosts", []) for name, value in data.items() if isinstance(value, dict)}
    return hostvars, groups


HOSTVARS, GROUPS = inventory()
MANAGED = sorted({h for g in ("rabbitmq", "logserver", "celery_beat", "celery_workers", "flower", "celery_clients")
                  for h in GROUPS.get(g, [])})


def container(name):
    return HOSTVARS[name]["ansible_host"]


def dexec(name, *argv, check=True, stdin=None):
    result = subprocess.run(["docker", "exec", "-i", container(name), *argv], text=True, capture_output=True,
                            input=stdin, check=False)
    if check and result.returncode != 0:
        sys.exit(f"bench: on {name}: {' '.join(argv)[:200]} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def playbook(path, *extra, inventory=INVENTORY):
    return ["ansible-playbook", "-i", str(inventory), "-e", f"@{SECRETS}", str(ROOT / path), *extra]


def switch_to_json():
    """Turn signing off on the whole lab. Beat stops first and the task
    queues drain: site.yml switches the pools before beat, and a signed
    message that reaches a pool already on json kills it. kombu hands an
    `application/data` body over undecoded, without the accept check, and
    celery's Request cannot unpack it ("Unrecoverable error: too many values
    to unpack"); unacked, the message comes back to the restarted pool.
    site.yml starts beat again, on json."""
    beat, broker = GROUPS["celery_beat"][0], GROUPS["rabbitmq"][0]
    vhost = HOSTVARS[broker].get("rabbitmq_vhost", "celery")
    log("switching the cluster to the json serializer (no signing): beat stops, the task queues drain")
    dexec(beat, "systemctl", "stop", "celery-beat.service")
    deadline = time.monotonic() + 120
    while True:
        out = dexec(broker, "rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages", "type",
                    "--no-table-headers")
        waiting = [line.split()[0] for line in out.splitlines()
                   if len(line.split()) == 3 and line.split()[2] == "quorum" and line.split()[1] != "0"]
        if not waiting:
            break
        if time.monotonic() > deadline:
            sys.exit(f"bench: the task queues did not drain in 120 s: {', '.join(waiting)}")
        time.sleep(1)
    must(playbook("playbooks/site.yml", "-e", json.dumps(JSON_VARS)))


# The timed converges print their result as data: Ansible's json callback,
# alone (the profile and timer callbacks of ansible.cfg would print text on
# the same stream).
AS_DATA = {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.json"}


def tree_pss_kib(root):
    """Proportional set size (KiB) of a process and all its descendants: what
    the controller's ansible-playbook, its forks and Mitogen's brokers hold
    in memory, shared pages counted once."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as handle:
                total += sum(int(line.split()[1]) for line in handle if line.startswith("Pss:"))
        except OSError:
            pass
    return total


def timed_converge(inventory=INVENTORY):
    """One site.yml run: seconds, changed tasks over every host, tasks started
    (handlers included), the controller's peak memory (MiB, PSS of the whole
    process tree, sampled every 0.5 s), and where the CPU went: the
    controller's (ansible-playbook and every process it started, user and
    system) and the lab's containers' (every host's own work), in seconds."""
    containers = lab_containers()
    hosts_before = container_cpu_s(containers)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    with subprocess.Popen(playbook("playbooks/site.yml", inventory=inventory), cwd=ROOT, env=dict(ENV, **AS_DATA),
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.wait(0.5):
                peak[0] = max(peak[0], tree_pss_kib(process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, err = process.communicate()
        done.set()
        sampler.join()
    seconds = time.monotonic() - start
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    hosts_after = container_cpu_s(containers)
    if process.returncode != 0:
        sys.exit(f"bench: site.yml on {inventory} failed:\n{out[-3000:]}\n{err[-3000:]}")
    result = json.loads(out)
    changed = sum(stats["changed"] for stats in result["stats"].values())
    # ansible-playbook is this process's only child while it runs (the
    # sampler reads /proc, it starts nothing), so the difference is its tree's.
    controller_cpu = sum(getattr(children_after, field) - getattr(children_before, field)
                         for field in ("ru_utime", "ru_stime"))
    hosts_cpu = sum(hosts_after[name] - hosts_before.get(name, 0) for name in hosts_after)
    return {"s": seconds, "changed": changed, "tasks": sum(len(play["tasks"]) for play in result["plays"]),
            "controller_mib": round(peak[0] / 1024, 1), "controller_cpu_s": round(controller_cpu, 1),
            "hosts_cpu_s": round(hosts_cpu, 1)}


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# --- 1 and 2: converges ------------------------------------------------------

def fresh_lab():
    log("destroying the lab and starting fresh containers")
    must(["make", "--no-print-directory", "lab-destroy"])
    must(["make", "--no-print-directory", "secrets"])
    must(["ansible-playbook", "-i", str(INVENTORY), "-e", f"@{SECRETS}", str(ROOT / "playbooks/lab/up.yml")])


def installed_packages():
    """What site.yml installed on each host: the packages apt marks manual
    that the base image does not, and each virtual environment's pip freeze."""
    baseline = {}
    packages = {}
    for name in MANAGED:
        image = HOSTVARS[name]["lab_image"]
        if image not in baseline:
            baseline[image] = set(subprocess.run(["docker", "run", "--rm", "--entrypoint", "apt-mark", image, "showmanual"],
                                                 capture_output=True, text=True, check=True).stdout.split())
        manual = set(dexec(name, "apt-mark", "showmanual").split())
        venvs = {}
        for venv in ("/opt/celery/venv", "/opt/flower/venv"):
            freeze = dexec(name, "sh", "-c", f"[ -x {venv}/bin/pip ] && {venv}/bin/pip freeze --all || true")
            wanted = [line for line in freeze.splitlines() if "==" in line and not line.startswith(("pip==", "setuptools=="))]
            if wanted:
                venvs[venv] = wanted
        packages[name] = {"apt": sorted(manual - baseline[image]), "pip": venvs}
    return packages


def save_wheelhouses(packages, into):
    """Copy each converged host's wheelhouse directories (the exact wheels
    site.yml installed from) to the controller, for the floor run."""
    for name, spec in packages.items():
        if not spec["pip"]:
            continue
        for directory in dexec(name, "sh", "-c", "ls -d /opt/*/wheelhouse 2>/dev/null || true").split():
            target = Path(into) / name / directory.strip("/").replace("/", "-")
            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["docker", "cp", f"{container(name)}:{directory}", str(target)], check=True)


def floor(packages, wheelhouses):
    """Install the same packages on fresh containers with plain apt-get and
    pip (all hosts in parallel); the wall time is the floor."""

    def one(name):
        spec = packages[name]
        for directory in sorted((Path(wheelhouses) / name).glob("*")):
            subprocess.run(["docker", "cp", str(directory), f"{container(name)}:/root/{directory.name}"], check=True)
        script = ["set -e", "export DEBIAN_FRONTEND=noninteractive", "apt-get update -q >/dev/null"]
        if spec["apt"]:
            script.append("apt-get install -y -q --no-install-recommends " + " ".join(spec["apt"]) + " >/dev/null")
        for venv, wanted in spec["pip"].items():
            target = f"/root/floor{venv.replace('/', '-')}"
            script.append(f"python3 -m venv {target}")
            links = " ".join(f"--find-links /root/{d.name}" for d in sorted((Path(wheelhouses) / name).glob("*")))
            script.append(f"{target}/bin/pip install -q --no-index {links} " + " ".join(wanted))
        start = time.monotonic()
        dexec(name, "sh", "-c", "\n".join(script))
        return time.monotonic() - start

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(MANAGED)) as pool:
        per_host = dict(zip(MANAGED, pool.map(one, MANAGED)))
    return time.monotonic() - start, per_host


def engine_floor(tasks=100):
    """What Ansible itself costs per task on the managed hosts: a play of
    `tasks` asserts that check nothing on the hosts, with the repository's
    ansible.cfg (strategy, forks). Beside the second converge's task count it
    is the part of that converge no role can remove."""
    body = "".join(f"    - name: t{i}\n      ansible.builtin.assert:\n        that: inventory_hostname is string\n"
                   f"        quiet: true\n" for i in range(tasks))
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        handle.write("- name: Engine floor\n  hosts: rabbitmq:logserver:celery\n  gather_facts: false\n"
                     "  tasks:\n" + body)
    try:
        seconds, _ = timed(["ansible-playbook", "-i", str(INVENTORY), handle.name])
    finally:
        os.unlink(handle.name)
    return seconds / tasks


# --- 3 and 5: throughput and memory ---------------------------------------------

THROUGHPUT = r"""
import json, sys, time
from celery.result import ResultSet
from celery_example.app import app
n, families = int(sys.argv[1]), sys.argv[2].split(",")
begin_at = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0  # several producers begin together
for i in range(30):  # warm the pools and the connections
    app.send_task(families[i % len(families)], [i]).get(timeout=120)
time.sleep(max(0.0, begin_at - time.time()))
sent = []
start = time.time()
with app.producer_or_acquire() as producer:
    for i in range(n):
        sent.append((time.time(), app.send_task(families[i % len(families)], [i], producer=producer)))
published = time.time()
# join_native reads the rpc:// replies as they come; AsyncResult.get() one by
# one waits up to a second per result once about a hundred are buffered.
values = ResultSet([r for _, r in sent]).join_native(timeout=600)
done = time.time()
starts = [(t, v["started"]) for (t, _), v in zip(sent, values)]
print(json.dumps({"n": n, "publish_s": published - start, "total_s": done - start,
                  "run_s": max(s for _, s in starts) - start, "start": start, "done": done,
                  "last_started": max(s for _, s in starts),
                  "latency_s": [s - t for t, s in starts]}))
"""

RAW = r"""
import json, sys, time, uuid
from kombu import Connection, Exchange, Queue
import celeryconfig as conf  # not the app: it would turn off the json decoder (signing)
spec = json.loads(sys.stdin.read())
url = conf.broker_url.split(";")[0]
url = url.split("://", 1)[0] + "://" + spec["user"] + ":" + spec["password"] + "@" + url.split("@", 1)[1]
n, body = spec["n"], "x" * 100
name = "bench-" + uuid.uuid4().hex
with Connection(url, ssl=conf.broker_use_ssl, transport_options={"confirm_publish": True}) as conn:
    exchange = Exchange("bench-" + uuid.uuid4().hex, type="direct", durable=False, auto_delete=True)
    queue = Queue(name, exchange, routing_key=name, durable=True, queue_arguments={"x-queue-type": "quorum"})
    producer = conn.Producer(serializer="json")
    queue(conn.default_channel).declare()
    start = time.time()
    for i in range(n):
        producer.publish(body, exchange=exchange, routing_key=name, delivery_mode=2)
    published = time.time()
    got = 0
    def on_message(message):
        global got
        got += 1
        message.ack()
    with conn.Consumer(queue, on_message=on_message, prefetch_count=200):
        while got < n:
            conn.drain_events(timeout=30)
    consumed = time.time()
    queue(conn.default_channel).delete()
print(json.dumps({"n": n, "publish_per_s": n / (published - start), "consume_per_s": n / (consumed - published)}))
"""


def pool_rss():
    """Resident memory (MiB) of each pool: its main process and its children."""
    rss = {}
    for worker in GROUPS.get("celery_workers", []):
        for pool in HOSTVARS[worker].get("celery_worker_pools", []):
            unit = f"celery-worker@{pool['name']}.service"
            kib = dexec(worker, "sh", "-c",
                        f"m=$(systemctl show -p MainPID --value {unit}); [ \"$m\" != 0 ] || exit 0; "
                        "for p in $m $(pgrep -P $m); do grep VmRSS /proc/$p/status 2>/dev/null; done "
                        "| awk '{s += $2} END {print s + 0}'").strip()
            rss[f"{worker}/{pool['name']}"] = round(int(kib or 0) / 1024, 1)
    return rss


def throughput(label, n):
    client = GROUPS["celery_clients"][0]
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(pool_rss())
            stop.wait(2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = dexec(client, *CELERY, THROUGHPUT, str(n), ",".join(FAMILIES))
    stop.set()
    sampler.join()
    data = json.loads(out.splitlines()[-1])
    latency = data.pop("latency_s")
    peak = {pool: max(sample.get(pool, 0) for sample in samples) for pool in (samples[0] if samples else {})}
    # tasks_per_s: until the client has read every result (rpc://);
    # started_per_s: until the pools had started the last task (their clocks).
    result = {"serializer": label, "tasks": n, "tasks_per_s": round(n / data["total_s"], 1),
              "started_per_s": round(n / data["run_s"], 1),
              "publish_per_s": round(n / data["publish_s"], 1),
              "latency_p50_ms": round(percentile(latency, 0.5) * 1000, 1),
              "latency_p99_ms": round(percentile(latency, 0.99) * 1000, 1)}
    log(f"throughput {label}: {result}")
    return result, peak


def raw_rate(n):
    client = GROUPS["celery_clients"][0]
    secrets = {}
    for line in SECRETS.read_text().splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            secrets[key.strip()] = value.strip().strip("'\"")
    spec = {"n": n, "user": "celery_worker",
            "password": urllib.parse.quote(secrets["vault_rabbitmq_worker_password"], safe="")}
    out = dexec(client, *CELERY, RAW, stdin=json.dumps(spec))
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in json.loads(out.splitlines()[-1]).items()}


# --- capacity: several producers --------------------------------------------------

def container_cpu_s(containers=None):
    """CPU seconds each container has used so far (its cgroup's cpu.stat: the
    host's own processes, systemd's included): the managed hosts' by
    default, keyed by host name, else the named containers'."""
    names = containers or [container(name) for name in MANAGED]
    out = {}
    for ident_name in names:
        ident = must(["docker", "inspect", "--format", "{{.Id}}", ident_name]).strip()
        # cgroup v2 (systemd or cgroupfs driver), else v1's cpuacct (ns).
        for path in (f"/sys/fs/cgroup/system.slice/docker-{ident}.scope/cpu.stat",
                     f"/sys/fs/cgroup/docker/{ident}/cpu.stat", f"/sys/fs/cgroup/cpuacct/docker/{ident}/cpuacct.usage"):
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
                out[ident_name] = (int(text) / 1e9 if path.endswith("cpuacct.usage") else
                                   next(int(line.split()[1]) for line in text.splitlines()
                                        if line.startswith("usage_usec")) / 1e6)
                break
    if containers is None:
        return {name: out[container(name)] for name in MANAGED if container(name) in out}
    return out


def lab_containers():
    """The names of every running container of the lab (fleet hosts included)."""
    return must(["docker", "ps", "--filter", "name=^celery-lab-", "--format", "{{.Names}}"]).split()


def capacity(label, n, producers):
    """End-to-end rate of `producers` processes on the client host, each
    publishing n / producers tasks and reading their results, all beginning
    at the same instant; and the CPU seconds each host spent meanwhile."""
    client = GROUPS["celery_clients"][0]
    each = max(1, n // producers)
    begin_at = time.time() + 15 + 5 * producers   # after every producer's warm-up
    before = container_cpu_s()
    with concurrent.futures.ThreadPoolExecutor(producers) as pool:
        outs = list(pool.map(lambda _: dexec(client, *CELERY, THROUGHPUT, str(each), ",".join(FAMILIES),
                                             str(begin_at)), range(producers)))
    after = container_cpu_s()
    runs = [json.loads(out.splitlines()[-1]) for out in outs]
    start, done = min(r["start"] for r in runs), max(r["done"] for r in runs)
    total = each * producers
    cpu = {name: round(after[name] - before.get(name, after[name]), 1) for name in after}
    result = {"serializer": label, "producers": producers, "tasks": total,
              "tasks_per_s": round(total / (done - start), 1),
              "started_per_s": round(total / (max(r["last_started"] for r in runs) - start), 1),
              "latency_p50_ms": round(percentile([x for r in runs for x in r["latency_s"]], 0.5) * 1000, 1),
              "latency_p99_ms": round(percentile([x for r in runs for x in r["latency_s"]], 0.99) * 1000, 1),
              "seconds": round(done - start, 1), "cpu_s": cpu}
    log(f"capacity {label} x{producers}: {result}")
    return result


def capacities(n, raw):
    """1, 2 and 4 producers, signed (the deployed lab) and unsigned (json),
    beside the broker's raw rate from the same host; the lab ends signed."""
    rows = [capacity("auth", n, p) for p in (1, 2, 4)]
    switch_to_json()
    rows += [capacity("json", n, p) for p in (1, 2, 4)]
    found = {"runs": rows, "raw_amqp": raw_rate(raw)}
    log("switching the cluster back to signing")
    must(playbook("playbooks/site.yml"))
    rate = {(r["serializer"], r["producers"]): r["tasks_per_s"] for r in rows}
    found["scaling_4_over_1"] = {label: round(rate[(label, 4)] / rate[(label, 1)], 2) for label in ("auth", "json")}
    found["signed_over_unsigned"] = {p: round(rate[("auth", p)] / rate[("json", p)], 2) for p in (1, 2, 4)}
    return found


# --- 4: beat ----------------------------------------------------------------------

def beat_lateness(seconds):
    beat = GROUPS["celery_beat"][0]
    log(f"watching beat for {seconds} s")
    time.sleep(seconds)
    out = dexec(beat, "journalctl", "--no-pager", "--output", "short-unix", "--unit", "celery-beat.service",
                f"--since=-{seconds}s")
    sent = [(float(m.group(1)), m.group(2)) for m in
            re.finditer(r"^(\d+\.\d+) .*Scheduler: Sending due task (\S+) ", out, re.MULTILINE)]
    crontab = [t - (t // 60) * 60 for t, name in sent if name == "heartbeat-every-minute"]
    interval = [t for t, name in sent if name == "heartbeat-every-10s"]
    drift = [abs((b - a) - 10) for a, b in zip(interval, interval[1:])]
    late = crontab + drift
    return {"firings": len(crontab) + len(interval), "crontab_firings": len(crontab),
            "crontab_lateness_s": [round(v, 3) for v in crontab],
            "interval_drift_p50_s": round(percentile(drift, 0.5), 3) if drift else None,
            "lateness_p50_s": round(percentile(late, 0.5), 3) if late else None,
            "lateness_p99_s": round(percentile(late, 0.99), 3) if late else None}


# --- fleet: cost against the number of worker hosts --------------------------------

# An extra worker host: one small pool on the media queue, its container on
# the lab network after the lab's own hosts.
FLEET_POOL = [{"name": "media", "queues": ["media"], "concurrency": 1}]


def fleet_inventory(workers, into):
    """The lab inventory with `workers` worker hosts in all (the lab has 2):
    hosts.yml rewritten in `into`, beside a link to the lab's group_vars."""
    import yaml
    data = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    pools = data["all"]["children"]["celery"]["children"]["celery_workers"]["hosts"]
    subnet = data["all"]["vars"]["lab_network_subnet"].rsplit(".", 1)[0]
    for n in range(len(pools) + 1, workers + 1):
        pools[f"worker{n}"] = {"ansible_host": f"celery-lab-worker{n}", "lab_address": f"{subnet}.{40 + n}",
                               "celery_worker_pools": FLEET_POOL}
    into.mkdir(parents=True, exist_ok=True)
    (into / "hosts.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    if not (into / "group_vars").exists():
        (into / "group_vars").symlink_to(INVENTORY / "group_vars")
    return into


# The figures of each fleet size that get a slope per added worker host.
FLEET_FIGURES = ("fresh_s", "no_change_s", "fresh_controller_mib", "no_change_controller_mib",
                 "fresh_controller_cpu_s", "no_change_controller_cpu_s", "fresh_hosts_cpu_s", "no_change_hosts_cpu_s")


def fit(points):
    """Least-squares slope and intercept of (x, y) points."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points)
             / (sum((x - mean_x) ** 2 for x, _ in points) or 1))
    return slope, mean_y - slope * mean_x


def fleet(sizes):
    """For each number of worker hosts: fresh containers for the whole lab,
    a converge from scratch and one with nothing to change, each with the
    controller's peak memory. Ends with the extra hosts removed and the
    lab's own inventory converged (allowlists without them)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        for workers in sizes:
            inventory = fleet_inventory(workers, Path(tmp) / f"workers-{workers}")
            log(f"fleet: {workers} worker hosts, fresh containers")
            must(["ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks/lab/destroy.yml")])
            must(["ansible-playbook", "-i", str(inventory), "-e", f"@{SECRETS}", str(ROOT / "playbooks/lab/up.yml")])
            fresh = timed_converge(inventory)
            nochange = timed_converge(inventory)
            hosts = len([line for line in (inventory / "hosts.yml").read_text().splitlines()
                         if line.strip().startswith("ansible_host:")]) - 1    # the outsider is not managed
            row = {"worker_hosts": workers, "managed_hosts": hosts, "fresh_s": round(fresh["s"], 1),
                   "fresh_changed": fresh["changed"], "fresh_controller_mib": fresh["controller_mib"],
                   "fresh_controller_cpu_s": fresh["controller_cpu_s"], "fresh_hosts_cpu_s": fresh["hosts_cpu_s"],
                   "no_change_s": round(nochange["s"], 1), "no_change_changed": nochange["changed"],
                   "no_change_tasks": nochange["tasks"], "no_change_controller_mib": nochange["controller_mib"],
                   "no_change_controller_cpu_s": nochange["controller_cpu_s"],
                   "no_change_hosts_cpu_s": nochange["hosts_cpu_s"]}
            log(f"  {row}")
            rows.append(row)
        largest = fleet_inventory(max(sizes), Path(tmp) / "largest")
        log("fleet: removing the extra worker hosts, converging the lab's own inventory")
        must(["ansible-playbook", "-i", str(largest), str(ROOT / "playbooks/lab/destroy.yml")])
        must(["make", "--no-print-directory", "lab-up"])
        timed_converge()
    per_worker = {key: round(fit([(r["worker_hosts"], r[key]) for r in rows])[0], 2) for key in FLEET_FIGURES}
    return {"sizes": rows, "per_added_worker_host": per_worker}


def fleet_projection(result, workers=45):
    """What the linear fit gives for `workers` worker hosts (50 hosts with
    the lab's five others)."""
    out = {}
    for key in FLEET_FIGURES:
        slope, intercept = fit([(r["worker_hosts"], r[key]) for r in result["sizes"]])
        out[key] = round(slope * workers + intercept, 1)
    return out


def fleet_chart(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["sizes"]
    x = [r["worker_hosts"] for r in rows]
    fig, (seconds, memory, cpu) = plt.subplots(1, 3, figsize=(16, 4))
    for key, label, colour in (("fresh_s", "converge from fresh containers", "#3b7dd8"),
                               ("no_change_s", "converge with nothing to change", "#5cb85c")):
        seconds.plot(x, [r[key] for r in rows], marker="o", color=colour,
                     label=f"{label} (+{result['per_added_worker_host'][key]} s per worker host)")
    seconds.set_xlabel("worker hosts (5 other hosts)")
    seconds.set_ylabel("seconds")
    seconds.set_ylim(bottom=0)
    seconds.legend(fontsize=8)
    seconds.set_title("site.yml against the fleet size")
    for key, label, colour in (("fresh_controller_mib", "fresh", "#3b7dd8"),
                               ("no_change_controller_mib", "nothing to change", "#5cb85c")):
        memory.plot(x, [r[key] for r in rows], marker="o", color=colour, label=label)
    memory.set_xlabel("worker hosts (5 other hosts)")
    memory.set_ylabel("MiB (PSS of ansible-playbook and its children)")
    memory.set_ylim(bottom=0)
    memory.legend(fontsize=8)
    memory.set_title("Controller's peak memory")
    # Where the CPU of a run goes (older results have no CPU figures).
    if all("no_change_controller_cpu_s" in r for r in rows):
        for key, label, colour, style in (
                ("fresh_controller_cpu_s", "controller, fresh", "#3b7dd8", "-"),
                ("fresh_hosts_cpu_s", "hosts, fresh", "#3b7dd8", "--"),
                ("no_change_controller_cpu_s", "controller, nothing to change", "#5cb85c", "-"),
                ("no_change_hosts_cpu_s", "hosts, nothing to change", "#5cb85c", "--")):
            cpu.plot(x, [r[key] for r in rows], marker="o", color=colour, linestyle=style,
                     label=f"{label} (+{result['per_added_worker_host'][key]} s per worker host)")
        cpu.legend(fontsize=8)
    cpu.set_xlabel("worker hosts (5 other hosts)")
    cpu.set_ylabel("CPU seconds in the run")
    cpu.set_ylim(bottom=0)
    cpu.set_title("Where the CPU goes: controller and hosts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# --- report -------------------------------------------------------------------------

def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (deploy, tasks) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["package floor", "converge (fresh)", "second converge"]
    values = [results["floor_s"], results["converge_fresh_s"], results["second_converge_s"]]
    deploy.bar(labels, values, color=["#999999", "#3b7dd8", "#5cb85c"])
    deploy.set_ylim(0, max(values) * 1.15)
    deploy.set_ylabel("seconds")
    deploy.set_title("Deploying the lab")
    for i, v in enumerate(values):
        deploy.text(i, v, f"{v:.0f} s", ha="center", va="bottom")
    tput = results["throughput"]
    tasks.bar([t["serializer"] for t in tput], [t["tasks_per_s"] for t in tput], color=["#d9534f", "#3b7dd8"])
    tasks.set_ylim(0, max(t["tasks_per_s"] for t in tput) * 1.3)  # room for the labels
    tasks.set_ylabel("tasks/s (end to end)")
    tasks.set_title("Trivial tasks, client to pools")
    for i, t in enumerate(tput):
        tasks.text(i, t["tasks_per_s"], f"{t['tasks_per_s']}/s\np99 {t['latency_p99_ms']} ms", ha="center", va="bottom")
    fig.suptitle(f"celery cluster bundle, {results['date']}, {results['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(r):
    t = {x["serializer"]: x for x in r["throughput"]}
    rows = [
        ("converge of the whole lab, fresh containers", f"{r['converge_fresh_s']:.0f} s", ""),
        ("package floor (same apt + pip packages, same hosts)", f"{r['floor_s']:.0f} s", ""),
        ("converge / floor", f"{r['converge_floor_ratio']:.2f}x", f"<= {TARGETS['converge_floor_ratio']}x"),
        ("second converge", f"{r['second_converge_s']:.1f} s, changed={r['second_converge_changed']}",
         f"< {TARGETS['second_converge_s']} s, changed=0"),
        ("second converge's CPU: the controller's (ansible-playbook and its children), the hosts' (containers)",
         f"{r['second_converge_controller_cpu_s']} s, {r['second_converge_hosts_cpu_s']} s"
         if "second_converge_controller_cpu_s" in r else "not measured", ""),
        ("Ansible's own cost per task (asserts on every managed host) x tasks of the second converge",
         f"{r['engine_s_per_task']} s x {r['second_converge_tasks']} = "
         f"{r['engine_s_per_task'] * r['second_converge_tasks']:.0f} s", ""),
        ("throughput, auth (signed)", f"{t['auth']['tasks_per_s']} tasks/s ({t['auth'].get('started_per_s')} started/s), "
         f"p50 {t['auth']['latency_p50_ms']} ms, "
         f"p99 {t['auth']['latency_p99_ms']} ms", ""),
        ("throughput, json (unsigned)", f"{t['json']['tasks_per_s']} tasks/s ({t['json'].get('started_per_s')} started/s), "
         f"p50 {t['json']['latency_p50_ms']} ms, "
         f"p99 {t['json']['latency_p99_ms']} ms", ""),
        ("signed / unsigned", f"{r['signed_unsigned_ratio']:.2f}x", f">= {TARGETS['signed_unsigned_ratio']}x"),
        ("raw AMQP, same broker and host", f"publish {r['raw_amqp']['publish_per_s']}/s, "
         f"consume {r['raw_amqp']['consume_per_s']}/s", ""),
        ("beat lateness", f"p50 {r['beat']['lateness_p50_s']} s, p99 {r['beat']['lateness_p99_s']} s "
         f"({r['beat']['firings']} firings)", f"p99 < {TARGETS['beat_p99_s']} s"),
    ]
    for pool, idle in sorted(r["rss_idle_mib"].items()):
        rows.append((f"RSS {pool}", f"idle {idle} MiB, load {r['rss_load_mib'].get(pool, '-')} MiB", ""))
    lines = [f"Benchmark of {r['date']} on {r['machine']} (`{r['command']}`, {r['bench_s']:.0f} s in all)."
             + (f" Fresh converge and package floor from the run of {r['fresh_figures_date']}."
                if r.get("fresh_figures_date") else ""), "",
             "| figure | value | target |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per throughput run")
    parser.add_argument("--raw", type=int, default=5000, help="messages of the raw AMQP run")
    parser.add_argument("--beat-seconds", type=int, default=190, help="how long to watch beat")
    parser.add_argument("--reuse-lab", action="store_true",
                        help="measure on the deployed lab: skip the fresh converges and the package floor "
                             "(their figures are kept from the previous bench/results.json, with their date)")
    parser.add_argument("--fleet", metavar="SIZES",
                        help="only the fleet figures: converge cost with this many worker hosts, e.g. 2,4,8 "
                             "(kept in bench/results.json beside the other figures)")
    parser.add_argument("--capacity", action="store_true",
                        help="only the capacity figures, on the deployed lab: 1, 2 and 4 producers, signed and "
                             "unsigned, --tasks tasks each (kept in bench/results.json beside the other figures)")
    args = parser.parse_args()
    began = time.monotonic()
    OUT.mkdir(exist_ok=True)
    if args.capacity:
        results = json.loads((OUT / "results.json").read_text())
        found = capacities(args.tasks, args.raw)
        found.update({"date": datetime.date.today().isoformat(),
                      "command": f"make bench BENCH_ARGS='--capacity --tasks {args.tasks} --raw {args.raw}'",
                      "bench_s": round(time.monotonic() - began)})
        results["capacity"] = found
        (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(found, indent=2))
        log(f"written: {OUT / 'results.json'} (capacity)")
        return
    if args.fleet:
        sizes = sorted({int(n) for n in args.fleet.split(",")})
        if len(sizes) < 2 or sizes[0] < 2 or sizes[-1] > 10:
            sys.exit("bench: --fleet takes at least two sizes, from 2 (the lab's own worker hosts) "
                     "to 10 (addresses .43 to .50)")
        results = json.loads((OUT / "results.json").read_text())
        found = fleet(sizes)
        found.update({"date": datetime.date.today().isoformat(), "projection_45_workers": fleet_projection(found),
                      "command": f"make bench BENCH_ARGS='--fleet {args.fleet}'",
                      "bench_s": round(time.monotonic() - began)})
        results["fleet"] = found
        (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        fleet_chart(found, OUT / "fleet.png")
        print(json.dumps(found, indent=2))
        log(f"written: {OUT / 'results.json'} (fleet), {OUT / 'fleet.png'}")
        return
    results = {"date": datetime.date.today().isoformat(),
               "machine": f"{platform.node() or 'controller'}: {os.cpu_count()} cores, "
                          f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
                          f"{platform.system()} {platform.release()}",
               "command": "make bench"}

    kept = ("converge_fresh_s", "converge_fresh_samples_s", "floor_s", "floor_per_host_s", "converge_floor_ratio",
            "packages")
    if args.reuse_lab:
        previous = json.loads((OUT / "results.json").read_text())
        results.update({key: previous[key] for key in kept})
        results["fresh_figures_date"] = previous.get("fresh_figures_date", previous["date"])
        results["command"] = "make bench BENCH_ARGS=--reuse-lab"
        log("reusing the deployed lab: converge")
        must(playbook("playbooks/site.yml"))
    else:
        fresh_lab()
        log("converge of the whole lab from fresh containers")
        fresh = timed_converge()
        results["converge_fresh_s"] = fresh["s"]
        log(f"  {results['converge_fresh_s']:.1f} s, changed={fresh['changed']}")
        packages = installed_packages()
        results["packages"] = {name: {"apt": len(p["apt"]), "pip": sum(len(v) for v in p["pip"].values())}
                               for name, p in packages.items()}

    log("second converge")
    second = timed_converge()
    for key in ("s", "changed", "tasks", "controller_mib", "controller_cpu_s", "hosts_cpu_s"):
        results[f"second_converge_{key}"] = second[key]
    log(f"  {results['second_converge_s']:.1f} s, changed={results['second_converge_changed']}, "
        f"{results['second_converge_tasks']} tasks")
    results["engine_s_per_task"] = round(engine_floor(), 3)
    log(f"  Ansible's own cost: {results['engine_s_per_task']} s per task on every managed host")

    results["rss_idle_mib"] = pool_rss()
    signed, peak_signed = throughput("auth", args.tasks)
    results["beat"] = beat_lateness(args.beat_seconds)
    results["raw_amqp"] = raw_rate(args.raw)
    switch_to_json()
    unsigned, peak_unsigned = throughput("json", args.tasks)
    results["throughput"] = [unsigned, signed]
    results["signed_unsigned_ratio"] = round(signed["tasks_per_s"] / unsigned["tasks_per_s"], 2)
    results["rss_load_mib"] = {pool: max(peak_signed.get(pool, 0), peak_unsigned.get(pool, 0)) for pool in peak_signed}

    if args.reuse_lab:
        log("switching the cluster back to signing")
        must(playbook("playbooks/site.yml"))
    else:
        wheelhouses = tempfile.mkdtemp(prefix="bench-wheelhouse-")
        save_wheelhouses(packages, wheelhouses)
        fresh_lab()
        log("package floor on fresh containers")
        results["floor_s"], results["floor_per_host_s"] = floor(packages, wheelhouses)
        results["floor_per_host_s"] = {k: round(v, 1) for k, v in results["floor_per_host_s"].items()}
        fresh_lab()
        log("converge of the whole lab from fresh containers, second sample (leaves the lab deployed)")
        again = timed_converge()["s"]
        results["converge_fresh_samples_s"] = [round(results["converge_fresh_s"], 1), round(again, 1)]
        results["converge_fresh_s"] = min(results["converge_fresh_s"], again)
        results["converge_floor_ratio"] = round(results["converge_fresh_s"] / results["floor_s"], 2)
    results["targets"] = TARGETS
    results["bench_s"] = time.monotonic() - began
    # The figures of --fleet and --capacity runs and the no-change converge measured by hand stay, with their dates.
    if (OUT / "results.json").exists():
        previous = json.loads((OUT / "results.json").read_text())
        results.update({key: previous[key] for key in ("fleet", "capacity", "no_change_converge") if key in previous})

    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "results.md").write_text(markdown(results))
    chart(results, OUT / "results.png")
    print(markdown(results))
    log(f"written: {OUT / 'results.json'}, {OUT / 'results.md'}, {OUT / 'results.png'}")


if __name__ == "__main__":
    main()
