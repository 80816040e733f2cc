"""Mitogen's `linear` strategy, loaded from the `mitogen` package that
scripts/bootstrap.sh installs into the controller's virtual environment.

Mitogen keeps one Python interpreter per host for the whole run and sends it
each task as a function call, instead of one `docker exec` (or SSH command)
and one fresh interpreter per task. On the lab that is what a converge with
nothing to change spends its time on (see README, Benchmark). Ansible finds
strategies by path, not by package, hence this module (the import, and
the CPU placement below); no maintained module or setting does either.
"""
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401  pylint: disable=unused-import
import ansible_mitogen.affinity  # noqa: E402  pylint: disable=wrong-import-position

# Mitogen pins processes to CPUs: on a machine with fewer than four, CPU 0 is
# kept for its multiplexer and Ansible's top-level process and every worker
# are all pinned to CPU 1, so tasks that run on the controller (assert,
# set_fact, include, argument checks: half of a converge with nothing to
# change) get one core of two. The base Policy pins nothing and leaves
# placement to the kernel. Measured on the 2-core lab: 100 asserts on the 7
# managed hosts 31.8 s pinned, 18.8 s unpinned; a no-change site.yml 137 and
# 141 s pinned, 123 and 129 s unpinned. Mitogen has no setting for it.
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()
