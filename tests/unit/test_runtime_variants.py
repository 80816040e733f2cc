"""celery_runtime_variants groups the Celery service hosts by the settings
their one play prepares once on the controller: the celery role's `layout`
entry point refuses more than one group, naming the hosts."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("celery_app_filters", ROOT / "roles/celery/filter_plugins/celery_app.py")
filters = importlib.util.module_from_spec(spec)
spec.loader.exec_module(filters)
KEYS = ["celery_app_source", "celery_app_directory", "celery_version"]


def test_hosts_that_agree_make_one_variant_and_an_unset_key_counts_as_the_default():
    hostvars = {"worker1": {"celery_app_source": "directory", "celery_app_directory": "/src/app"},
                "beat1": {"celery_app_source": "directory", "celery_app_directory": "/src/app", "other": 1}}
    variants = filters.celery_runtime_variants(["worker1", "beat1"], hostvars, KEYS)
    assert variants == [{"hosts": ["worker1", "beat1"],
                         "values": {"celery_app_source": "directory", "celery_app_directory": "/src/app",
                                    "celery_version": None}, "differs": ""}]


def test_a_host_with_another_application_is_its_own_variant_in_order():
    hostvars = {"worker1": {"celery_app_source": "directory", "celery_app_directory": "/src/app"},
                "client1": {"celery_app_source": "package", "celery_app_directory": "/src/app"},
                "worker2": {"celery_app_source": "directory", "celery_app_directory": "/src/app"}}
    variants = filters.celery_runtime_variants(["worker1", "client1", "worker2"], hostvars, KEYS)
    assert [v["hosts"] for v in variants] == [["worker1", "worker2"], ["client1"]]
    assert variants[1]["values"]["celery_app_source"] == "package"
    # Only the settings that differ, an unset one named as the default.
    assert [v["differs"] for v in variants] == ['celery_app_source="directory"', 'celery_app_source="package"']
    unset = filters.celery_runtime_variants(["a", "b"], {"a": {}, "b": {"celery_version": "5.6.3"}}, KEYS)
    assert [v["differs"] for v in unset] == ["celery_version=the default", 'celery_version="5.6.3"']


def test_no_hosts_no_variant():
    assert filters.celery_runtime_variants([], {}, KEYS) == []


class RawHostvars(dict):
    """Like Ansible's hostvars: raw_get gives a host's variables unrendered."""

    def raw_get(self, host):
        return self[host]["raw"]


def test_values_are_compared_as_written_not_rendered():
    # A template naming a role default (not among another host's variables)
    # is compared as its text; a host that overrides it differs.
    shared = "/cache/celery-{{ celery_version }}/examples/django"
    hostvars = RawHostvars(worker1={"raw": {"celery_app_directory": shared}},
                           beat1={"raw": {"celery_app_directory": shared}},
                           client1={"raw": {"celery_app_directory": "/srv/other"}})
    variants = filters.celery_runtime_variants(["worker1", "beat1", "client1"], hostvars, KEYS)
    assert [v["hosts"] for v in variants] == [["worker1", "beat1"], ["client1"]]
    assert variants[1]["differs"] == 'celery_app_directory="/srv/other"'
