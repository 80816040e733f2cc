"""Mitogen's `linear` strategy, loaded from the `mitogen` package that
scripts/bootstrap.sh installs into the controller's virtual environment.

Mitogen keeps one Python interpreter per host for the whole run and sends it
each task as a function call, instead of one `docker exec` (or SSH command)
and one fresh interpreter per task. On the lab that is what a converge with
nothing to change spends its time on (see README, Benchmark). Ansible finds
strategies by path, not by package, hence this module (the import, and
below: the CPU placement, the warm Jinja plugin cache, the tasks that need
no host run without a fork, the compiled templates kept); no maintained
module or setting does any of them.
"""
import gc
import os

import ansible_mitogen.affinity
from ansible._internal._task import TaskContext
from ansible._internal._templating._engine import TemplateEngine
from ansible.executor.task_executor import TaskExecutor
from ansible.executor.task_result import _RawTaskResult
from ansible.playbook.handler import Handler
from ansible.plugins import loader as plugin_loader
from ansible.plugins.loader import filter_loader, test_loader
from ansible.utils.fqcn import add_internal_fqcns
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
    before each fork, and no fork for a task that needs no host.

    Ansible runs every task for every host in a worker process forked from
    this one. Two costs of that are not the task's own work:

    - The worker loads the filter and test plugins the first time it renders
      a template, by executing the source of every plugin file: ansible-core's,
      and each role's filter_plugins. Loading a role clears that cache, and
      the top-level process rarely renders a filter itself. So almost every
      worker loaded all of them again and threw them away. Mitogen does the
      same warming for modules, actions and connections (its `_queue_task`);
      this adds the Jinja plugins. Measured on the 7-host lab, with nothing
      to change, alternated with the tree before: site.yml 71.1 s on average
      against 76.7 s (docs/benchmark.md, item 8).
    - The fork itself, for a task that only reads variables (assert, fail,
      debug, set_fact, the roles' argument checks, includes) or whose
      condition is false: each fork marks this process's memory
      copy-on-write, and the pages both sides then write are copied, about a
      third of the controller's CPU on a run with nothing to change. Those
      tasks run here, through ansible-core's own TaskExecutor (a skip: its
      steps up to the condition), and their result takes the worker's path
      back (the result queue), so callbacks, registered values, facts,
      handlers and failures are handled as before. Measured alternated on
      the 7-host lab: site.yml 31.5 s against 36.9 s, the controller's CPU
      30.4 s against 43.6 s (docs/benchmark.md, item 15). A module task
      whose condition is true still goes to a worker, as does anything this
      cannot decide without raising.

    ansible-core has no setting for either. tests/unit/test_strategy_shim.py
    fails if the cache is no longer filled before the fork, or if a task run
    here gives another result than ansible-core's own linear strategy.
    """

    def _queue_task(self, host, task, task_vars, play_context):
        for loader in (filter_loader, test_loader):
            # all() is a generator: its first step fills the cache when it is
            # empty; when it is full, the step only lists what it holds.
            next(iter(loader.all()), None)
        sent, executor = task, None
        if runs_here(task):
            try:
                sent = task.copy(exclude_tasks=True)  # the executor writes templated values into it and its blocks
                with TaskContext(sent):
                    executor = TaskExecutor(host, sent, task_vars.copy(), play_context, self._loader,
                                            plugin_loader.get_plugin_loader_namespace(), self._final_q,
                                            self._variable_manager)
            except Exception:  # noqa: BLE001 - a worker then does it, and reports what fails
                sent, executor = task, None
        result = None if executor is not None else skip_result_here(host, task, task_vars, play_context, self._loader)
        if executor is None and result is None:
            return super()._queue_task(host, task, task_vars, play_context)
        # As StrategyBase._queue_task and WorkerProcess._run do, without the
        # fork (ansible-core 2.19, pinned in requirements-dev.txt).
        self._queued_task_cache[(host.name, task._uuid)] = {  # noqa: SLF001
            "host": host, "task": task, "task_vars": task_vars, "play_context": play_context}
        self._tqm.send_callback("v2_runner_on_start", host, task)
        if executor is not None:
            with TaskContext(sent):
                result = executor.run()  # catches what the task raises, as in a worker
        self._final_q.send_task_result(_RawTaskResult(host=host, task=sent, return_data=result, task_fields=sent.dump_attrs()))
        self._pending_results += 1
        return None


HERE = frozenset(add_internal_fqcns(("assert", "fail", "debug", "set_fact", "validate_argument_spec",
                                     "include_tasks", "include_role")))


def runs_here(task):
    """Whether `task` only reads variables, so that it can run in this process:
    no handler, nothing that waits (until, retries, async, timeout, a pause
    between loop items)."""
    return (task.action in HERE and not isinstance(task, Handler) and not task.until and not task.retries
            and not task.async_val and not task.timeout
            and not (task.loop_control and task.loop_control.pause))


def skip_result_here(host, task, task_vars, play_context, loader):
    """The result a forked worker would send for `task` on `host` when the
    task's condition is false, or None when the worker must decide.

    Mirrors ansible-core 2.19's TaskExecutor up to its conditional: the
    search path (_get_loop_items), the play context's connection variables
    (_execute_internal), then Task._resolve_conditional, and the no_log
    mark (_execute). Only a task without a loop (its condition is per item),
    without delegate_to (the condition then sees the delegated host's
    variables) and not a handler is decided here; anything that raises goes
    to the worker, which raises it as before.
    """
    if not task.when or task.loop_with or task.loop is not None or task.delegate_to is not None or isinstance(task, Handler):
        return None
    try:
        with TaskContext(task):
            variables = dict(task_vars)
            search_path = task.get_search_path()
            if loader.get_basedir() not in search_path:
                search_path.append(loader.get_basedir())
            variables["ansible_search_path"] = search_path
            templar = TemplateEngine(loader=loader, variables=variables)
            context = play_context.set_task_and_variable_override(task=task, variables=variables, templar=templar)
            context.post_validate(templar=templar)
            if not context.remote_addr:
                context.remote_addr = host.address
            context.update_vars(variables)
            false_condition = {}
            if task._resolve_conditional(task.when, variables, result_context=false_condition):  # noqa: SLF001
                return None
            result = dict(changed=False, skipped=True, skip_reason="Conditional result was False") | false_condition
            task.update_result_no_log(templar, result)
            return result
    except Exception:  # noqa: BLE001 - the worker raises it, with ansible-core's own message
        return None


# Ansible compiles every template and expression it renders (conditions,
# task arguments, variables) from its source, each time: one TemplateEngine
# per task and host, and no cache of compiled templates. With the tasks
# above now rendered in this process, the same sources were compiled again
# for every host and every play: about a quarter of this process's CPU on a
# run with nothing to change (Jinja's compiler, in a sampling profile). A
# compiled template holds no values: it is rendered with each task's own
# variables. So compiled ones are kept, per source, per base directory (the
# environment's one setting that differs between engines) and per option
# set; the forked workers inherit them. Measured alternated on the 7-host
# lab: site.yml 26.3 s against 30.9 s (docs/benchmark.md, item 16).
# ansible-core has no setting for it.
_COMPILED = {}
_compile_template = TemplateEngine._compile_template  # noqa: SLF001
_compile_expression = TemplateEngine._compile_expression  # noqa: SLF001


def _compiled(kind, compile_source):
    def compiled(self, source, options):
        key = (kind, self.basedir, str(source), options)
        found = _COMPILED.get(key)
        if found is None:
            found = _COMPILED[key] = compile_source(self, source, options)
        return found
    return compiled


TemplateEngine._compile_template = _compiled("template", _compile_template)  # noqa: SLF001
TemplateEngine._compile_expression = _compiled("expression", _compile_expression)  # noqa: SLF001
