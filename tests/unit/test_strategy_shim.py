"""The strategy shim (plugins/strategy/mitogen_linear.py) loads the Jinja
filter and test plugins in Ansible's top-level process before each fork, so
the forked task workers inherit them loaded (docs/benchmark.md, item 8).
This reads the loaders' cache directly: if ansible-core renames or moves it,
the test fails and says the warming no longer does anything."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from ansible.playbook.task import Task
from ansible.plugins.loader import filter_loader, init_plugin_loader, test_loader

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("shim_mitogen_linear", ROOT / "plugins/strategy/mitogen_linear.py")
shim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shim)


def test_queue_task_fills_the_jinja_plugin_caches_before_handing_the_task_on(monkeypatch):
    init_plugin_loader()
    queued = []

    def base_queue_task(self, host, task, task_vars, play_context):
        # What a forked worker would inherit at this moment.
        queued.append((host, bool(filter_loader._cached_non_collection_wrappers),  # noqa: SLF001
                       bool(test_loader._cached_non_collection_wrappers)))  # noqa: SLF001
        return "queued"

    monkeypatch.setattr(shim.MitogenLinear, "_queue_task", base_queue_task)
    # As loading a role does (PluginLoader.add_directory clears the caches).
    for loader in (filter_loader, test_loader):
        loader._clear_caches()  # noqa: SLF001
        assert not loader._cached_non_collection_wrappers  # noqa: SLF001

    strategy = object.__new__(shim.StrategyModule)  # no task queue manager needed for this method
    strategy._loader = None  # noqa: SLF001 - a task without a condition needs none
    task = Task.load({"name": "A module on the host", "ansible.builtin.command": "true"})  # goes to a worker
    assert strategy._queue_task("worker1", task, {}, "play_context") == "queued"  # noqa: SLF001
    assert queued == [("worker1", True, True)]
    assert "bool" in filter_loader._cached_non_collection_wrappers  # noqa: SLF001 - ansible-core's own filters


def test_a_forked_worker_leaves_the_inherited_objects_out_of_its_collections():
    # What the shim registers at import runs in every child forked after it
    # (Ansible's task workers); the top-level process stays unfrozen.
    import gc
    import os

    before = gc.get_freeze_count()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its frozen count, and leave at once
        os.write(write, str(gc.get_freeze_count()).encode())
        os._exit(0)
    os.close(write)
    frozen_in_child = int(os.read(read, 64))
    os.close(read)
    os.waitpid(pid, 0)
    assert frozen_in_child > len(gc.get_objects(generation=2)) // 2
    assert gc.get_freeze_count() == before


PLAY_DIR = Path(__file__).resolve().parent / "strategy_play"


def _run_play(strategy, tmp_path):
    """Run strategy_play/play.yml on two local hosts; the json callback's
    results per task and host, and the pid of ansible-playbook."""
    # An empty ANSIBLE_CALLBACKS_ENABLED is refused by ansible-core; the timer
    # prints after the json document, which raw_decode leaves out.
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STRATEGY=strategy,
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_CALLBACKS_ENABLED="ansible.posix.timer",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    process = subprocess.Popen([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(PLAY_DIR / "hosts.yml"),
                                str(PLAY_DIR / "play.yml")], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 2, out  # host two fails on purpose
    document = json.JSONDecoder().raw_decode(out)[0]
    volatile = {"duration", "start", "end", "delta", "invocation"}
    # The callback keeps an entry per task and host with a strategy other than
    # ansible-core's linear, one per task with linear (a meta task's then
    # has no host): merged per task here, hostless entries left out.
    results = {}
    for play in document["plays"]:
        for task in play["tasks"]:
            if not task["hosts"]:
                continue
            hosts = results.setdefault((task["task"]["id"], task["task"]["name"]), {})
            hosts.update({host: {k: v for k, v in result.items() if k not in volatile}
                          for host, result in task["hosts"].items()})
    return [(name, dict(sorted(hosts.items()))) for (_, name), hosts in results.items()], process.pid, document["stats"]


def test_the_tasks_decided_in_the_top_level_process_give_ansible_cores_own_results(tmp_path):
    shim_results, shim_pid, shim_stats = _run_play("mitogen_linear", tmp_path)
    core_results, core_pid, core_stats = _run_play("linear", tmp_path)

    def without_renderer(results):
        return [(name, {host: {k: v for k, v in r.items() if k != "ansible_facts" or "shim_rendered_by" not in v}
                        for host, r in hosts.items()}) for name, hosts in results]

    assert without_renderer(shim_results) == without_renderer(core_results)
    assert shim_stats == core_stats
    assert shim_stats["two"]["failures"] == 1 and shim_stats["one"]["failures"] == 0
    by_name = dict(shim_results)
    assert "must be one of: 1, got: 2" in by_name["Arguments refused by a spec, with its message"]["two"]["msg"]
    assert by_name["Shim handler"]["one"]["ansible_facts"] == {"shim_handled": True}
    # Rendered in ansible-playbook itself with the shim, in a forked worker without it.
    rendered = by_name["Record the process that rendered this"]
    assert rendered["one"]["ansible_facts"]["shim_rendered_by"] == str(shim_pid)
    rendered = {name: hosts for name, hosts in core_results}["Record the process that rendered this"]
    assert rendered["one"]["ansible_facts"]["shim_rendered_by"] != str(core_pid)


def test_a_template_compiled_once_renders_each_hosts_own_values():
    from ansible._internal._templating._engine import TemplateEngine
    from ansible.template import trust_as_template

    source = "{{ shim_value * 2 }} {{ 'yes' if shim_value > 1 else 'no' }}"
    before = len(shim._COMPILED)  # noqa: SLF001
    first = TemplateEngine(variables={"shim_value": 1}).template(trust_as_template(source))
    second = TemplateEngine(variables={"shim_value": 3}).template(trust_as_template(source))
    assert (first, second) == ("2 no", "6 yes")
    assert len(shim._COMPILED) == before + 1  # noqa: SLF001 - one compile for both engines
