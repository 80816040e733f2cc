"""scripts/test.sh (`make test`): lint and the unit tests run beside the
molecule scenarios; when they fail, the scenarios are stopped and destroyed
at once, not left to run their 40 minutes. Run here in a copy of the script
with stand-ins for the two commands it drives (the scenarios' script and
molecule), which CI runs for real around it."""
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tree(tmp_path, lint_ok):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test.sh", tmp_path / "scripts" / "test.sh")
    scenarios = tmp_path / "scripts" / "molecule-scenarios.sh"
    # The scenarios: a long run (and a child of it) whose PIDs are recorded.
    scenarios.write_text("#!/usr/bin/env bash\necho $$ > scenarios.pid\nsleep 300 &\necho $! > child.pid\n"
                         "wait\necho finished > scenarios.done\n")
    # A failing lint fails once the scenarios and their child have started,
    # as the real one does (it takes about 90 s): a lint that failed before
    # the stand-in recorded its child would leave nothing to check (a CI
    # run under load once got there first).
    lint = "true" if lint_ok else "while [ ! -s child.pid ]; do sleep 0.05; done; false"
    (tmp_path / "Makefile").write_text("lint:\n\t@echo linting; " + lint +
                                       "\nunit:\n\t@echo '217 passed in 1.0s'\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "molecule").write_text('#!/usr/bin/env bash\necho "$@" >> "$MOLECULE_CALLS"\n')
    for path in (scenarios, tmp_path / "scripts" / "test.sh", bin_dir / "molecule"):
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", MOLECULE_CALLS=str(tmp_path / "calls"))
    return env


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for this purpose.
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]


def test_a_failing_lint_stops_and_destroys_the_scenarios_at_once(tmp_path):
    env = _tree(tmp_path, lint_ok=False)
    started = time.monotonic()
    result = subprocess.run(["scripts/test.sh", "default", "broker_cluster"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert "lint or the unit tests FAILED" in result.stdout and "linting" in result.stdout
    pids = [int((tmp_path / name).read_text()) for name in ("scenarios.pid", "child.pid")]
    assert not any(_alive(pid) for pid in pids), pids
    assert not (tmp_path / "scenarios.done").exists()
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["destroy --scenario-name default", "destroy --scenario-name broker_cluster"], calls


def test_a_passing_lint_waits_for_the_scenarios_and_takes_their_status(tmp_path):
    env = _tree(tmp_path, lint_ok=True)
    scenarios = tmp_path / "scripts" / "molecule-scenarios.sh"
    scenarios.write_text("#!/usr/bin/env bash\nsleep 1\necho finished > scenarios.done\nexit 3\n")
    result = subprocess.run(["scripts/test.sh", "default"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "lint and the unit tests passed" in result.stdout and "217 passed" in result.stdout
    assert (tmp_path / "scenarios.done").exists()
    assert not (tmp_path / "calls").exists()
