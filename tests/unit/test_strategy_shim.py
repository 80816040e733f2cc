"""The strategy shim (plugins/strategy/mitogen_linear.py) loads the Jinja
filter and test plugins in Ansible's top-level process before each fork, so
the forked task workers inherit them loaded (docs/benchmark.md, item 8).
This reads the loaders' cache directly: if ansible-core renames or moves it,
the test fails and says the warming no longer does anything."""
import importlib.util
from pathlib import Path

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
    assert strategy._queue_task("worker1", "task", {}, "play_context") == "queued"  # noqa: SLF001
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
