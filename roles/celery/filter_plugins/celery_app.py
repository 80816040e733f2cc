"""Filters for the operator's application (celery_app_source: directory).

celery_tree_digest names one content of a source tree on the controller, so
that each host receives a release once per content and keeps earlier ones
for rollback. Written by hand: ansible.builtin.stat digests one file and
no maintained module digests a tree; a timestamp would change on every
checkout and redeploy the same code.
"""
import fnmatch
import hashlib
import json
import os

from ansible.errors import AnsibleFilterError


def _excluded(name, patterns):
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def celery_tree_digest(path, exclude=(), length=16):
    """sha256 over every file of the tree `path` (relative name, executable
    bit, content), in sorted order, skipping names that match `exclude`
    (files and directories, at any depth). Symbolic links count by target
    path. The first `length` hex digits."""
    path = os.path.expanduser(str(path))
    if not os.path.isdir(path):
        raise AnsibleFilterError(f"celery_tree_digest: {path} is not a directory on the controller")
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(name for name in dirs if not _excluded(name, exclude))
        for name in sorted(files):
            if _excluded(name, exclude):
                continue
            full = os.path.join(root, name)
            relative = os.path.relpath(full, path)
            digest.update(relative.encode() + b"\0")
            if os.path.islink(full):
                digest.update(b"link\0" + os.readlink(full).encode() + b"\0")
                continue
            digest.update(b"x\0" if os.access(full, os.X_OK) else b"-\0")
            with open(full, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 16), b""):
                    digest.update(block)
            digest.update(b"\0")
    return digest.hexdigest()[:int(length)]


def celery_runtime_variants(hosts, hostvars, keys):
    """The distinct values the settings `keys` take over `hosts`, in order of
    first appearance: a list of {"hosts": [...], "values": {key: value}}, one
    entry when every host agrees, and "differs", the text of its settings
    that differ between the entries. The values are compared as written
    (templates unrendered); a key a host does not set is None there (the
    role's default, the same for all). Written by hand: no filter groups
    hosts by several of their variables at once."""
    variants = []
    # As the inventory and extra vars give them, not rendered: a value may
    # name a role default (celery_app_directory: ".../celery-{{ celery_version }}/..."),
    # which another host's variables do not hold. Hosts that take a setting
    # from the same place have the same text.
    raw = getattr(hostvars, "raw_get", None)
    for host in hosts:
        own = raw(host) if raw else hostvars[host]
        values = {key: (own[key] if key in own else None) for key in keys}
        for variant in variants:
            if variant["values"] == values:
                variant["hosts"].append(host)
                break
        else:
            variants.append({"hosts": [host], "values": values})
    # For the refusal: each variant's settings that differ between them.
    differ = [key for key in keys if len({json.dumps(v["values"][key], sort_keys=True) for v in variants}) > 1]
    for variant in variants:
        variant["differs"] = ", ".join(
            f"{key}=" + ("the default" if variant["values"][key] is None else json.dumps(variant["values"][key]))
            for key in differ)
    return variants


class FilterModule:
    def filters(self):
        return {"celery_tree_digest": celery_tree_digest, "celery_runtime_variants": celery_runtime_variants}
