"""Preflight check of celery_app_module, run on the controller (celery role,
tasks/assert.yml): can the entry module (celery_cluster) import that app?

    python check_app_module.py MODULE [--source PATH ...] [--import]

MODULE is the `celery --app` value (`proj`, `proj.celery`, `proj.celery:app`).
--source names where the application's code is on the controller: a source
tree (its src/ layout too) or a wheel. Without --source only the syntax is
checked (an application installed from a requirement the controller does
not hold). --import then imports it in a separate Python, with only the
sources and this Python's own packages on sys.path, as Celery's `--app` does:
an exception in the app's own code, a missing attribute or something that is
not a Celery app is refused; a third-party package missing from the
controller (Django, say) cannot be checked here and is only reported.

Prints one problem per line, each naming celery_app_module, and exits 1 when
there is any; 0 otherwise (notes, if any, on stdout).
"""
import argparse
import importlib.machinery
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
SYNTAX = re.compile(rf"^{NAME}(\.{NAME})*(:{NAME}(\.{NAME})*)?$")

# Run in a fresh interpreter: the operator's code never runs in this process,
# and a hanging import is cut short by the timeout.
PROBE = r"""
import json, sys
module, paths = sys.argv[1], json.loads(sys.argv[2])
sys.path[:0] = paths
top = module.split(":")[0].split(".")[0]
try:
    from celery import Celery
    from celery.app.utils import find_app
except ImportError as error:
    print(json.dumps({"missing": getattr(error, "name", None) or str(error), "own": False}))
    sys.exit(0)
try:
    app = find_app(module)
except ModuleNotFoundError as error:
    name = error.name or ""
    own = name == top or name.startswith(top + ".")
    print(json.dumps({"missing": name or str(error), "own": own}))
    sys.exit(0)
except BaseException as error:
    print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
    sys.exit(0)
print(json.dumps({"app": isinstance(app, Celery), "repr": repr(app)[:200]}))
"""


def _paths(sources, workdir):
    """sys.path entries for the sources: a tree (and its src/), or a wheel
    unpacked (compiled modules cannot be imported from a zip)."""
    paths = []
    for source in sources:
        if os.path.isdir(source):
            paths.append(source)
            if os.path.isdir(os.path.join(source, "src")):
                paths.append(os.path.join(source, "src"))
        elif source.endswith(".whl") and os.path.isfile(source):
            target = os.path.join(workdir, os.path.basename(source))
            with zipfile.ZipFile(source) as wheel:
                wheel.extractall(target)
            paths.append(target)
    return paths


def _locate(module, paths):
    """None when every package of MODULE's import path is found in `paths`
    (without running any of it), else what is missing."""
    parts = module.split(":")[0].split(".")
    if ":" not in module and len(parts) > 1:
        parts = parts[:-1]  # `proj.app`: the last name may be an attribute (find_app)
    search = list(paths)
    for depth, part in enumerate(parts):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return ".".join(parts[:depth + 1])
        if depth < len(parts) - 1:
            if not spec.submodule_search_locations:
                return ".".join(parts[:depth + 2])  # a plain module has no submodules
            search = list(spec.submodule_search_locations)
    return None


def problems(module, sources=(), import_check=False, python=None, timeout=120):
    """(problems, notes) of celery_app_module=`module`."""
    found, notes = [], []
    if not isinstance(module, str) or not SYNTAX.match(module):
        return [f"celery_app_module={module!r} is not a module path (`proj`, `proj.celery` or `proj.celery:app`)"], notes
    if not sources:
        notes.append(f"celery_app_module={module!r}: the application is not on the controller, only its syntax was checked")
        return found, notes
    missing_sources = [source for source in sources if not os.path.exists(source)]
    if missing_sources:
        return [f"celery_app_module={module!r}: the application's source {', '.join(missing_sources)} does not exist"], notes
    with tempfile.TemporaryDirectory(prefix="check-app-module-") as workdir:
        paths = _paths(sources, workdir)
        missing = _locate(module, paths)
        if missing:
            return [f"celery_app_module={module!r}: no module {missing} in {', '.join(sources)}"], notes
        if not import_check:
            return found, notes
        # The host's /etc/celery, last on the path: an app that loads the
        # cluster's module by name (the bundle's example does) finds one.
        stub = os.path.join(workdir, "etc-celery")
        os.mkdir(stub)
        for name in ("celeryconfig.py", "beatconfig.py"):
            with open(os.path.join(stub, name), "w", encoding="ascii") as handle:
                handle.write("# stand-in for the host's generated module\n")
        try:
            run = subprocess.run([python or sys.executable, "-c", PROBE, module, json.dumps(paths + [stub])],
                                 capture_output=True, text=True, timeout=timeout, check=False,
                                 cwd=workdir, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        except subprocess.TimeoutExpired:
            return [f"celery_app_module={module!r}: importing it took more than {timeout} s"], notes
    lines = run.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        return [f"celery_app_module={module!r}: importing it failed: {(run.stderr or run.stdout).strip()[-500:]}"], notes
    if "error" in result:
        found.append(f"celery_app_module={module!r} cannot be imported: {result['error']}")
    elif "missing" in result and result["own"]:
        found.append(f"celery_app_module={module!r} cannot be imported: no module named {result['missing']}")
    elif "missing" in result:
        notes.append(f"celery_app_module={module!r}: found, but not imported on the controller, which lacks "
                     f"{result['missing']} (the hosts install it from the wheelhouse)")
    elif not result.get("app"):
        found.append(f"celery_app_module={module!r} names {result.get('repr')}, not a Celery app")
    return found, notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module")
    parser.add_argument("--source", action="append", default=[])
    parser.add_argument("--import", dest="import_check", action="store_true")
    parser.add_argument("--timeout", type=int, default=120)
    args = parser.parse_args(argv)
    found, notes = problems(args.module, [source for source in args.source if source], args.import_check,
                            timeout=args.timeout)
    for line in notes:
        print(line)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
