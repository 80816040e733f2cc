"""celery_tree_digest names one content of celery_app_directory: a host
unpacks a release once per digest and keeps it for rollback, so the digest
must change with any file the hosts run and with nothing else."""
import importlib.util
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("celery_app_filters", ROOT / "roles/celery/filter_plugins/celery_app.py")
filters = importlib.util.module_from_spec(spec)
spec.loader.exec_module(filters)
EXCLUDE = ["__pycache__", "*.pyc", ".git", "*.sqlite3"]


@pytest.fixture
def project(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "__init__.py").write_text("")
    (tmp_path / "proj" / "celery.py").write_text("app = None\n")
    (tmp_path / "manage.py").write_text("print('manage')\n")
    return tmp_path


def digest(path):
    return filters.celery_tree_digest(str(path), EXCLUDE)


def test_the_same_content_has_the_same_digest_wherever_it_is(project, tmp_path_factory):
    copy = tmp_path_factory.mktemp("copy")
    for name in ("proj/__init__.py", "proj/celery.py", "manage.py"):
        (copy / name).parent.mkdir(exist_ok=True)
        (copy / name).write_bytes((project / name).read_bytes())
    assert digest(project) == digest(copy) and len(digest(project)) == 16


@pytest.mark.parametrize("change", ["content", "new file", "rename", "executable"])
def test_any_change_the_hosts_would_run_changes_the_digest(project, change):
    before = digest(project)
    if change == "content":
        (project / "proj" / "celery.py").write_text("app = 1\n")
    elif change == "new file":
        (project / "proj" / "tasks.py").write_text("")
    elif change == "rename":
        (project / "manage.py").rename(project / "run.py")
    else:
        os.chmod(project / "manage.py", 0o755)
    assert digest(project) != before


def test_excluded_names_do_not_count_at_any_depth(project):
    before = digest(project)
    (project / "proj" / "__pycache__").mkdir()
    (project / "proj" / "__pycache__" / "celery.cpython-313.pyc").write_bytes(b"\0")
    (project / ".git").mkdir()
    (project / ".git" / "HEAD").write_text("ref\n")
    (project / "db.sqlite3").write_bytes(b"SQLite")
    assert digest(project) == before


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="is not a directory on the controller"):
        digest(tmp_path / "absent")
