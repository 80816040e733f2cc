"""Mitogen's `linear` strategy, loaded from the `mitogen` package that
scripts/bootstrap.sh installs into the controller's virtual environment.

Mitogen keeps one Python interpreter per host for the whole run and sends it
each task as a function call, instead of one `docker exec` (or SSH command)
and one fresh interpreter per task. On the lab that is what a converge with
nothing to change spends its time on (see README, Benchmark). Ansible finds
strategies by path, not by package, hence this module (the import, the CPU
placement and the warm Jinja plugin cache below); no maintained module or
setting does any of them.
"""
import gc
import os

import ansible_mitogen.affinity
from ansible.plugins.loader import filter_loader, test_loader
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule as MitogenLinear

# Mitogen pins processes to CPUs: on a machine with fewer than four, CPU 0 is
# kept for its multiplexer and Ansible's top-level process and every worker
# are all pinned to CPU 1, so tasks that run on the controller (assert,
# set_fact, include, argument checks: half of a converge with nothing to
# change) get one core of two. The base Policy pins nothing and leaves
# placement to the kernel. Measured on the 2-core lab: 100 asserts on the 7
# managed hosts 31.8 s pinned, 18.8 s unpinned; a no-change site.yml 137 and
# 141 s pinned, 123 and 129 s unpinned. Mitogen has no setting for it.
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

# Every task runs in a worker forked from this process, which holds the
# whole run's state (inventory, variables, loaded plugins). Pages are shared
# with the fork until either side writes to them, and the cyclic garbage
# collector writes to every object it scans: a collection in a worker copied
# the pages of the inherited objects it walked, which a worker, gone after
# its one task, has no use collecting. Frozen right after the fork, they are
# left out of the worker's collections (gc.freeze moves them to a
# generation it never scans; the worker's own objects are still collected).
# The top-level process itself is not frozen. Python's documentation gives
# gc.freeze for processes that fork; Ansible does not use it. Measured on
# the 7-host lab: about 3% less controller CPU (docs/benchmark.md, item 10).
os.register_at_fork(after_in_child=gc.freeze)


class StrategyModule(MitogenLinear):
    """Mitogen's linear strategy, with the Jinja filters and tests loaded
    before each fork.

    Ansible runs every task for every host in a forked worker process. The
    worker loads the filter and test plugins the first time it renders a
    template, by executing the source of every plugin file: ansible-core's,
    and each role's filter_plugins. Loading a role clears that cache, and
    the top-level process rarely renders a filter itself. So almost every
    worker loaded all of them again and threw them away. Mitogen does the
    same warming for modules, actions and connections (its `_queue_task`);
    this adds the Jinja plugins. Measured on the 7-host lab, with nothing to
    change, alternated with the tree before: site.yml 71.1 s on average
    against 76.7 s, the controller's CPU 79 to 85 s against 87 to 97 s
    (docs/benchmark.md, item 8). tests/unit/test_strategy_shim.py fails if
    the cache is no longer filled before the fork.
    """

    def _queue_task(self, host, task, task_vars, play_context):
        for loader in (filter_loader, test_loader):
            # all() is a generator: its first step fills the cache when it is
            # empty; when it is full, the step only lists what it holds.
            next(iter(loader.all()), None)
        return super()._queue_task(host, task, task_vars, play_context)
