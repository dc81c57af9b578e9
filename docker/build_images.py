#!/usr/bin/env python3
"""Build kpiguard's images with buildah: no Docker daemon, no registry (`make images`, docs/deploy.md).

1. The base, once: a Debian 12 root filesystem from `debootstrap --variant=minbase` with python3 and
   python3-venv, from the Debian mirror of this machine's own apt sources, committed as BASE_IMAGE. The
   Dockerfiles' default base, python:3.11-slim-bookworm, sits on a registry this machine may not reach.
2. Each image with `buildah bud --build-arg BASE=<that base>`: docker/Dockerfile.airflow as
   kpiguard-airflow, docker/Dockerfile.mlflow as kpiguard-mlflow (or one --dockerfile as --tag).

The build's pip steps use this machine's pip configuration (its files and PIP_* variables, as
`pip config list` reports them), written to one file that the build reads through PIP_CONFIG_FILE. Every
local path it names (a CA bundle, a constraints file, a wheel directory) is mounted read-only under
/mnt/host, and torch comes from TORCH_WHEELS when that directory holds the lock's torch wheel. Nothing of
it lands in the image: the whole build configuration is one read-only volume on /mnt, a directory every
Debian image already has, and the mount points inside it live in a temporary directory of this machine.

A failed step prints "<Dockerfile>: step N (<instruction>) failed:" and the step's last lines of output,
then exits 1; the whole log is in build/images/<tag>.log.
"""
from __future__ import annotations

import argparse
import ast
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOGS = REPO / "build" / "images"
SUITE = "bookworm"
BASE_IMAGE = f"localhost/kpiguard-debian-base:{SUITE}"
BASE_ROOTFS = Path("/var/tmp/kpiguard-debian-base")  # debootstrap's scratch tree, removed once committed
IMAGES = {"kpiguard-airflow": "docker/Dockerfile.airflow", "kpiguard-mlflow": "docker/Dockerfile.mlflow"}
# What the build sees of this machine: its pip configuration, and the files that configuration names
MOUNT = "/mnt"
HOST_PATHS = f"{MOUNT}/host"
PIP_CONFIG = f"{MOUNT}/pip.conf"
# pip options whose values may be local paths (or file:// URLs): those paths are mounted into the build
PATH_OPTIONS = {"cert", "client-cert", "constraint", "requirement", "find-links", "index-url", "extra-index-url"}
# a local index (PEP 503) links to its files relatively, beside it (simple/../files/): its parent is mounted
INDEX_OPTIONS = {"index-url", "extra-index-url"}
# a minimal Debian has no image config: the PATH every Debian image sets
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FAILURE_LINES = 15
# buildah's "STEP 3/12: RUN pip install ...", in a multi-stage build "[2/3] STEP 3/9: ..." (counted per stage)
STEP = re.compile(r"^(?:\[(\d+)/\d+\] )?STEP (\d+)/\d+: (.*)$")


class BuildError(Exception):
    """A step that failed: the message says which, with its last lines of output (never a traceback)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dockerfile", help="build only this Dockerfile (relative to the repository root)")
    parser.add_argument("--tag", help="the image name for --dockerfile")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="passed to buildah bud, after the ones this script sets")
    parser.add_argument("--torch-wheels", default=os.environ.get("TORCH_WHEELS", "/opt/wheels"),
                        help="a directory with the lock's torch wheel; without it torch comes from its index")
    args = parser.parse_args(argv)
    if bool(args.dockerfile) != bool(args.tag):
        parser.error("--dockerfile and --tag go together")
    images = {args.tag: args.dockerfile} if args.dockerfile else IMAGES
    try:
        ensure_base()
        with tempfile.TemporaryDirectory(prefix="kpiguard-build-", dir="/var/tmp") as scratch:
            mounts, build_args = build_inputs(Path(scratch), args.torch_wheels)
            for tag, dockerfile in images.items():
                build(dockerfile, tag, mounts, build_args + args.build_arg)
    except BuildError as e:
        print(e, file=sys.stderr)
        return 1
    except FileNotFoundError as e:  # a tool that is not installed
        print(f"{e.filename}: not installed (`make image-tools` installs buildah and debootstrap)", file=sys.stderr)
        return 1
    return 0


# ---- the base image ----------------------------------------------------------------------------------

def ensure_base() -> None:
    if image_exists(BASE_IMAGE):
        print(f"base: {BASE_IMAGE} exists")
        return
    sources = debian_sources(apt_sources(Path("/etc/apt")))
    mirror = next(s["URIs"].split()[0] for s in sources if SUITE in s["Suites"].split())
    started = time.monotonic()
    print(f"base: debootstrap {SUITE} (minbase, python3, python3-venv) from {mirror}")
    shutil.rmtree(BASE_ROOTFS, ignore_errors=True)
    log = LOGS / "debian-base.log"
    run_logged(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", SUITE,
                str(BASE_ROOTFS), mirror], log, "debootstrap")
    # the image's apt reads the same mirrors as this machine (updates and security included)
    (BASE_ROOTFS / "etc/apt/sources.list").unlink(missing_ok=True)
    (BASE_ROOTFS / "etc/apt/sources.list.d/debian.sources").write_text(
        "\n".join("".join(f"{key}: {s[key]}\n" for key in ("Types", "URIs", "Suites", "Components"))
                  for s in sources))
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (BASE_ROOTFS / cache).glob("*"):
            if entry.is_file():
                entry.unlink()
    container = buildah("from", "scratch")
    try:
        mountpoint = buildah("mount", container)
        run_logged(["cp", "-a", f"{BASE_ROOTFS}/.", mountpoint], log, "copying the root filesystem")
        buildah("umount", container)
        buildah("config", "--env", f"PATH={DEBIAN_PATH}", "--cmd", "/bin/bash", container)
        buildah("commit", "--quiet", "--format", "docker", container, BASE_IMAGE)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    shutil.rmtree(BASE_ROOTFS)
    print(f"base: {BASE_IMAGE} committed in {time.monotonic() - started:.0f}s")


def apt_sources(etc_apt: Path) -> list[dict[str, str]]:
    """Every entry of sources.list, sources.list.d/*.list (one-line style) and *.sources (deb822)."""
    entries = []
    one_line = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]
    for path in filter(Path.is_file, one_line):
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()  # [options] dropped
            if len(words) >= 3:
                entries.append({"Types": words[0], "URIs": words[1], "Suites": words[2],
                                "Components": " ".join(words[3:])})
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = {}
            for line in stanza.splitlines():
                if line and not line.startswith(("#", " ", "\t")) and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip()] = value.strip()
            if fields.get("Enabled", "yes") != "no" and {"Types", "URIs", "Suites"} <= set(fields):
                entries.append(fields)
    return entries


def debian_sources(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    """The binary-package entries for SUITE and its -updates and -security suites."""
    wanted = {SUITE, f"{SUITE}-updates", f"{SUITE}-security"}
    found = [{**e, "Suites": " ".join(s for s in e["Suites"].split() if s in wanted),
              "Components": e.get("Components", "main")}
             for e in entries if "deb" in e["Types"].split() and wanted & set(e["Suites"].split())]
    if not any(SUITE in e["Suites"].split() for e in found):
        raise BuildError(f"base: no Debian '{SUITE}' entry in /etc/apt/sources.list or sources.list.d/: "
                         "debootstrap needs a mirror of it")
    return found


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True).returncode == 0


# ---- the build's view of this machine ----------------------------------------------------------------

def build_inputs(scratch: Path, torch_wheels: str) -> tuple[list[str], list[str]]:
    """The volumes and build arguments that give the build this machine's pip configuration and wheels.

    scratch becomes /mnt in the build: it holds pip.conf and a mount point for each host path under
    host/, so buildah creates nothing in the image's own tree.
    """
    settings = pip_settings()
    host_paths: set[Path] = set()
    for options in settings.values():
        for option, value in options.items():
            if option in PATH_OPTIONS:
                options[option] = " ".join(in_build(item, host_paths, with_parent=option in INDEX_OPTIONS)
                                           for item in value.split())
    build_args = [f"BASE={BASE_IMAGE}", f"PIP_CONFIG_FILE={PIP_CONFIG}"]
    wheels = Path(torch_wheels)
    torch = locked_version("torch")
    if any(wheels.glob(f"torch-{torch}-cp311-*.whl")):
        host_paths.add(wheels.resolve())
        build_args.append(f"TORCH_WHEELS={HOST_PATHS}{wheels.resolve()}")
        print(f"torch {torch}: from {wheels}")
    else:
        print(f"torch {torch}: no wheel of it in {wheels}, from the Dockerfile's TORCH_INDEX_URL")
    (scratch / "pip.conf").write_text("".join(
        f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()) for section, options in settings.items()))
    mounts = [f"{scratch}:{MOUNT}:ro"]
    for path in sorted(host_paths):
        if any(other in path.parents for other in host_paths):
            continue  # inside another mounted path already
        mountpoint = scratch / "host" / path.relative_to("/")
        if path.is_dir():
            mountpoint.mkdir(parents=True, exist_ok=True)
        else:
            mountpoint.parent.mkdir(parents=True, exist_ok=True)
            mountpoint.touch()
        mounts.append(f"{path}:{HOST_PATHS}{path}:ro")
    return mounts, build_args


def pip_settings() -> dict[str, dict[str, str]]:
    """This machine's pip configuration by section; PIP_* variables (":env:") override [global] and every section."""
    run = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    if run.returncode:
        raise BuildError(f"pip config list failed: {run.stderr.strip()}")
    listed = run.stdout
    sections: dict[str, dict[str, str]] = collections.defaultdict(dict)
    from_env = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        section, _, option = key.rpartition(".")
        if section == ":env:":
            from_env[option] = ast.literal_eval(value)
        else:
            sections[section][option] = ast.literal_eval(value)
    for options in sections.values():
        options.update({k: v for k, v in from_env.items() if k in options})
    sections["global"].update(from_env)
    return dict(sections)


def in_build(item: str, host_paths: set[Path], with_parent: bool = False) -> str:
    """item as the build sees it: a local path that exists here moves under HOST_PATHS; a URL stays.

    The path (with_parent: its parent directory too) joins host_paths, the paths to mount.
    """
    scheme = "file://" if item.startswith("file://") else ""
    path = Path(item[len(scheme):])
    if not path.is_absolute() or not path.exists():
        return item
    path = path.resolve()
    host_paths.add(path.parent if with_parent else path)
    return f"{scheme}{HOST_PATHS}{path}"


def locked_version(package: str) -> str:
    lock = (REPO / "requirements.lock").read_text()
    return re.search(rf"^{re.escape(package)}==(\S+)$", lock, re.M).group(1)


# ---- buildah -----------------------------------------------------------------------------------------

def build(dockerfile: str, tag: str, mounts: list[str], build_args: list[str]) -> None:
    started = time.monotonic()
    print(f"{tag}: buildah bud -f {dockerfile} (log: {LOGS.relative_to(REPO) / tag}.log)")
    # --force-rm: a failed step leaves no working container behind
    command = ["buildah", "bud", "--isolation", "chroot", "--layers", "--force-rm", "--pull=never",
               "--format", "docker", "-f", dockerfile, "-t", tag]
    command += [f"--volume={m}" for m in mounts]
    command += [f"--build-arg={a}" for a in build_args]
    step, last = "", collections.deque(maxlen=FAILURE_LINES)
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / f"{tag}.log", "w") as log, subprocess.Popen(
            [*command, "."], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace") as proc:
        for line in proc.stdout:
            log.write(line)
            line = line.rstrip()
            if match := STEP.match(line):
                step = match
                last.clear()
                print(f"  {line[:110]}", flush=True)
            elif line:
                last.append(line)
    if proc.returncode:
        stage = f" of stage {step.group(1)}" if step and step.group(1) else ""
        where = f"step {step.group(2)}{stage} ({step.group(3)[:100]})" if step else "before its first step"
        raise BuildError(f"{dockerfile}: {where} failed:\n" + "\n".join(f"  {line}" for line in last))
    print(f"{tag}: built in {time.monotonic() - started:.0f}s")


def buildah(*args: str) -> str:
    run = subprocess.run(["buildah", *args], capture_output=True, text=True)
    if run.returncode:
        raise BuildError(f"base: buildah {args[0]} failed: {run.stderr.strip()}")
    return run.stdout.strip()


def run_logged(command: list[str], log: Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        run = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if run.returncode:
        tail = log.read_text(errors="replace").splitlines()[-FAILURE_LINES:]
        raise BuildError(f"base: {what} failed (log: {log}):\n" + "\n".join(f"  {line}" for line in tail))


if __name__ == "__main__":
    sys.exit(main())
