#!/usr/bin/python
"""Keep a directory of PEM certificates equal to a given set, in one task.

Written by hand: no maintained module syncs a whole directory of small
files from data in one round trip (a loop of `copy` costs a round trip per
certificate per host). Celery's FSCertStore reads every file of the glob
`security_cert_store`; a certificate present twice makes it refuse to start,
so each certificate is written once, under a name derived from its content.
"""
import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: celery_signer_store
short_description: Sync a directory of signer certificates (Celery's security_cert_store)
description:
  - Writes each given certificate to its own file and removes the files of
    the directory that are not given and whose name matches I(prune).
options:
  path: {description: Directory of the store (must exist)., type: path, required: true}
  certificates: {description: File name to PEM content., type: dict, required: true}
  prune: {description: Regular expression of the file names this module owns., type: str, default: '^.+\.pem$'}
  keep_prefixes: {description: Files whose name starts with one of these are kept even when not given., type: list, elements: str, default: []}
  mode: {description: Mode of the files., type: str, default: '0644'}
"""

RETURN = r"""
written: {description: Files written or replaced., type: list, returned: always}
removed: {description: Files removed., type: list, returned: always}
"""


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "certificates": {"type": "dict", "required": True},
            "prune": {"type": "str", "default": r"^.+\.pem$"},
            "keep_prefixes": {"type": "list", "elements": "str", "default": []},
            "mode": {"type": "str", "default": "0644"},
        },
        supports_check_mode=True,
    )
    path, wanted = module.params["path"], module.params["certificates"]
    prune, keep = re.compile(module.params["prune"]), tuple(module.params["keep_prefixes"])
    mode = int(module.params["mode"], 8)
    if not os.path.isdir(path):
        module.fail_json(msg=f"{path} is not a directory")
    for name, content in wanted.items():
        if "/" in name or name.startswith(".") or not prune.match(name):
            module.fail_json(msg=f"certificate file name {name!r} is not a plain name matching {prune.pattern}")
        if "-----BEGIN CERTIFICATE-----" not in str(content):
            module.fail_json(msg=f"{name}: not a PEM certificate")

    written, removed = [], []
    for name, content in sorted(wanted.items()):
        target = os.path.join(path, name)
        data = str(content).strip() + "\n"
        try:
            with open(target, encoding="utf-8") as handle:
                same = handle.read() == data and (os.stat(target).st_mode & 0o7777) == mode
        except FileNotFoundError:
            same = False
        if same:
            continue
        written.append(name)
        if not module.check_mode:
            handle, temporary = tempfile.mkstemp(dir=path, prefix=".tmp-")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(data)
            os.chmod(temporary, mode)
            os.replace(temporary, target)
    for name in sorted(os.listdir(path)):
        if prune.match(name) and name not in wanted and not (keep and name.startswith(keep)):
            removed.append(name)
            if not module.check_mode:
                os.unlink(os.path.join(path, name))
    module.exit_json(changed=bool(written or removed), written=written, removed=removed)


if __name__ == "__main__":
    main()
