"""Registry credentials for the tests: a Docker credential helper of the tests' own, and a
registry of the tests' own.

- `TestHelper`: a real `docker-credential-NAME` executable (a Python script) in a folder of its
  own that the test puts on PATH. It speaks the docker-credential-helpers protocol (`get`: the
  server URL on stdin, `{"ServerURL","Username","Secret"}` on stdout; `list`), answers from a
  JSON file the test rewrites, and logs each call (action, server; never a secret). An answer
  may also be "fail" (prints a secret-looking text on stdout and stderr, exits 1), "hang"
  (starts a child `sleep`, writes its pid, and sleeps) or "garbage" (prints no JSON).
- `PrivateRegistry`: `docker-registry serve` (distribution) with htpasswd auth of its own user
  and password, its own port on every host address (a dind sidecar reaches it through the host
  gateway, by the registry's name) and its own storage; never the shared one on :5000.
  distribution re-reads its htpasswd file when it changes (checked: 2.8.2), so a new password
  needs no restart."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import start_registry, wait_for_registry
from tests.support.fleet import free_port

HELPER_SCRIPT = '''#!{python}
"""docker-credential-{name}: the tests' credential helper (tests/support/credentials.py)."""
import json, os, subprocess, sys, time
HERE = {here!r}
action = sys.argv[1] if len(sys.argv) > 1 else ""
server = sys.stdin.read().strip()
with open(os.path.join(HERE, "calls.log"), "a") as log:
    log.write(f"{{time.time():.3f}} {{action}} {{server}}\\n")
with open(os.path.join(HERE, "answers.json")) as handle:
    answers = json.load(handle)
if action == "list":
    print(json.dumps({{s: a.get("Username", "") for s, a in answers.items() if isinstance(a, dict)}}))
    sys.exit(0)
if action != "get":
    sys.exit(2)
answer = answers.get(server)
if answer == "fail":
    print("helper-leak-stdout-" + server)
    print("helper-leak-stderr-" + server, file=sys.stderr)
    sys.exit(1)
if answer == "hang":
    child = subprocess.Popen(["sleep", "300"])
    with open(os.path.join(HERE, "hang.pid"), "w") as handle:
        handle.write(str(child.pid))
    time.sleep(300)
if answer == "garbage":
    print("this is not json")
    sys.exit(0)
if not isinstance(answer, dict):
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, **answer}}))
'''


class TestHelper:
    """`docker-credential-NAME` in `folder` (put `folder` on PATH)."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, folder: Path, name: str = "test"):
        self.folder, self.name = folder, name
        folder.mkdir(parents=True, exist_ok=True)
        self.program = folder / f"docker-credential-{name}"
        self.program.write_text(HELPER_SCRIPT.format(python=sys.executable, name=name, here=str(folder)))
        self.program.chmod(self.program.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.answer({})

    def answer(self, answers: dict) -> None:
        """What the helper answers from now on: {server URL: {"Username", "Secret"} | "fail" | "hang" | "garbage"}."""
        temporary = self.folder / "answers.json.new"
        temporary.write_text(json.dumps(answers))
        temporary.replace(self.folder / "answers.json")

    def calls(self, action: str = "get") -> list[str]:
        """The server URLs asked for so far, oldest first."""
        log = self.folder / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line.split(" ", 2)[2] if line.count(" ") >= 2 else "" for line in lines if line.split(" ")[1] == action]

    def path_env(self) -> str:
        """PATH with the helper's folder first."""
        return f"{self.folder}{os.pathsep}{os.environ.get('PATH', os.defpath)}"


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


class PrivateRegistry:
    """A registry of the tests' own (see the module doc), with the users and passwords in
    `users` (the first one seeds images and reads them back)."""

    def __init__(self, root: Path, users: dict[str, str], name: str):
        self.root, self.users, self.name = root, dict(users), name
        self.port = free_port()
        self.loopback = f"127.0.0.1:{self.port}"
        self.by_name = f"{name}:{self.port}"
        self.proc: subprocess.Popen | None = None

    @property
    def owner(self) -> tuple[str, str]:
        return next(iter(self.users.items()))

    def start(self) -> PrivateRegistry:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_htpasswd()
        config = self.root / "registry.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "version": 0.1, "log": {"level": "error"},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}},
            "http": {"addr": f"0.0.0.0:{self.port}"},
            "auth": {"htpasswd": {"realm": "runner-private", "path": str(self.root / "htpasswd")}},
        }))
        log = self.root / "registry.log"
        self.proc = start_registry(config, log, start_new_session=True)
        wait_for_registry(self.loopback, self.proc, log=log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def _write_htpasswd(self) -> None:
        lines = [subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True).stdout.strip()
                 for user, password in self.users.items()]
        temporary = self.root / "htpasswd.new"
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(self.root / "htpasswd")

    def logs_in(self, user: str, password: str) -> bool:
        return httpx.get(f"http://{self.loopback}/v2/", auth=(user, password), timeout=5).status_code == 200

    def set_password(self, user: str, password: str, timeout: float = 20) -> None:
        """A new password for `user`; returns once the registry takes it."""
        self.users[user] = password
        self._write_htpasswd()
        deadline = time.monotonic() + timeout
        while not self.logs_in(user, password):
            assert time.monotonic() < deadline, f"registry {self.loopback} did not take the new password"
            time.sleep(0.1)

    def creds(self) -> str:
        return ":".join(self.owner)

    def seed(self, services: dict, repository: str) -> str:
        """The shared base image copied into `repository:1` here (skopeo); its path without the host."""
        shared = f"{services['RUNNER_DEV_REGISTRY_USER']}:{services['RUNNER_DEV_REGISTRY_PASSWORD']}"
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--src-creds", shared,
                        "--dest-creds", self.creds(), f"docker://{services['RUNNER_DEV_BASE_IMAGE']}",
                        f"docker://{self.loopback}/{repository}:1"], check=True, capture_output=True, timeout=120)
        return f"{repository}:1"

    def digest(self, ref: str) -> str:
        """What this registry holds for `ref` (host/repository:tag, by either name), read by skopeo."""
        path = ref.split("/", 1)[1]
        out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", self.creds(),
                              f"docker://{self.loopback}/{path}"], check=True, capture_output=True, text=True, timeout=60).stdout
        return json.loads(out)["Digest"]


class MountedSecret:
    """A Kubernetes-style mounted secret holding one file: the kubelet writes each version into a
    folder of its own and swaps the `..data` symlink to it atomically (AtomicWriter), so the
    file the runner reads (`path`) is a symlink that starts pointing at a new inode."""

    def __init__(self, root: Path, name: str = ".dockerconfigjson"):
        self.root, self.name, self.version = root, name, 0
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / name

    def write(self, text: str) -> None:
        self.version += 1
        folder = self.root / f"..2026_12_0{self.version}"
        folder.mkdir(mode=0o700)
        (folder / self.name).write_text(text)
        os.chmod(folder / self.name, 0o600)
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        link.replace(self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to(f"..data/{self.name}")
