#!/usr/bin/env python3
"""Checks the deployment files under deploy/ (run by `make deploy-check`,
part of `make test`; run it with the stack's venv, which has
kubernetes-validate and PyYAML):

- deploy/kubernetes: kustomization.yaml lists exactly the YAML files of the
  directory, and each of them validates against the Kubernetes API schemas
  with `kubernetes-validate --strict` (strict: a misspelt or misplaced
  field is an error, not ignored);
- deploy/systemd/foodpipe.service: `systemd-analyze verify` says nothing
  (it exits 0 on an unknown key and only prints it, so any output fails);
- no file under deploy/ holds a password: every URL with a password has
  the placeholder REPLACE_ME.

Exit 0 when all hold, 1 naming each failure.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "foodpipe.service"
PLACEHOLDER = "REPLACE_ME"

failures = []


def fail(msg):
    failures.append(msg)
    print(f"deploy-check: FAIL: {msg}", file=sys.stderr)


def check_kubernetes():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization.get("resources") or []
    present = sorted(
        p.name for p in K8S.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml"
    )
    if sorted(listed) != present:
        fail(f"kustomization.yaml lists {sorted(listed)}, the directory holds {present}")
    files = [str(K8S / name) for name in listed if (K8S / name).exists()]
    validator = shutil.which("kubernetes-validate", path=os.path.dirname(sys.executable)) or shutil.which(
        "kubernetes-validate"
    )
    if validator is None:
        fail("kubernetes-validate is not installed (make up installs it into .stack/venv)")
        return
    run = subprocess.run([validator, "--strict", *files], capture_output=True, text=True)
    out = (run.stdout + run.stderr).strip()
    if run.returncode != 0 or "ERROR" in out or "WARN" in out:
        fail(f"kubernetes-validate --strict (exit {run.returncode}):\n{out}")
    else:
        print(f"deploy-check: {len(files)} Kubernetes manifests valid (kubernetes-validate --strict)")


def check_systemd():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        fail("systemd-analyze is not installed (Debian package systemd; make up installs it)")
        return
    # verify checks that ExecStart's binary and the EnvironmentFile exist on
    # this machine; point them at files that do, keep everything else.
    text = UNIT.read_text()
    text = text.replace("ExecStart=/usr/local/bin/foodpipe", "ExecStart=" + shutil.which("true"))
    text = text.replace("EnvironmentFile=/etc/foodpipe/foodpipe.env", "EnvironmentFile=/dev/null")
    with tempfile.TemporaryDirectory() as tmp:
        unit = Path(tmp) / UNIT.name
        unit.write_text(text)
        run = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    out = (run.stdout + run.stderr).strip()
    if run.returncode != 0 or out:
        fail(f"systemd-analyze verify {UNIT.relative_to(ROOT)} (exit {run.returncode}):\n{out}")
    else:
        print(f"deploy-check: {UNIT.relative_to(ROOT)} verified (systemd-analyze verify: no complaint)")


URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:([^\s@'\"]+)@")


def check_no_password():
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for m in URL_WITH_PASSWORD.finditer(line):
                if m.group(1) not in (PLACEHOLDER, "..."):
                    fail(f"{path.relative_to(ROOT)}:{lineno}: a password that is not the placeholder {PLACEHOLDER}")


check_kubernetes()
check_systemd()
check_no_password()
if failures:
    print(f"deploy-check: {len(failures)} failure(s)", file=sys.stderr)
    sys.exit(1)
print("deploy-check: ok")
