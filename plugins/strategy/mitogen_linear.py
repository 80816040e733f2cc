"""Mitogen's `linear` strategy, loaded from the `mitogen` package that
scripts/bootstrap.sh installs into the controller's virtual environment.

Mitogen keeps one Python interpreter per host for the whole run and sends it
each task as a function call, instead of one `docker exec` (or SSH command)
and one fresh interpreter per task. On the lab that is what a converge with
nothing to change spends its time on (see README, Benchmark). Ansible finds
strategies by path, not by package, hence this one-line module; no
maintained module or setting does it.
"""
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401  pylint: disable=unused-import
