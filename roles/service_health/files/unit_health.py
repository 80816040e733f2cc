"""Print, as JSON, the state of the systemd units named as arguments: active
and sub state, restart count, and the seconds their main process has run.

Why a script: no module returns a unit's age. systemd stamps the start of a
main process with CLOCK_MONOTONIC (ExecMainStartTimestampMonotonic, in µs),
the clock Python's time.monotonic() reads, so the age needs no wall clock."""
import json
import subprocess
import sys
import time

PROPERTIES = "Id,ActiveState,SubState,NRestarts,ExecMainStartTimestampMonotonic"


def main(units):
    shown = subprocess.run(["systemctl", "show", f"--property={PROPERTIES}", *units],
                           capture_output=True, text=True, check=True).stdout
    now = time.monotonic()
    out = {}
    for unit, block in zip(units, shown.strip().split("\n\n")):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        started = int(values.get("ExecMainStartTimestampMonotonic") or 0)
        out[unit] = {"active": values.get("ActiveState", "unknown"), "sub": values.get("SubState", "unknown"),
                     "restarts": int(values.get("NRestarts") or 0),
                     "age": round(now - started / 1e6, 1) if started else 0}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
