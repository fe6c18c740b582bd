"""The conformance suite's Python environments, one per component, cached.

Each environment is built from ``envs/<component>.txt``: pip requirements that pin the
component's program at the version of its default image, plus exactly the packages that
image adds (each file says how that package set was determined). An environment lives in
``$AISTACK_CONFORMANCE_CACHE/<component>-<hash of its file>`` (default
``~/.cache/aistack-conformance``), so editing a requirements file builds a new one and the
second run of the suite builds nothing.

Two conventions on top of pip's: a line ``-r other.txt`` includes another environment's
file (an image built on another image), and a requirement followed by the comment
``# --no-deps`` is installed without its dependencies, after everything else (for a
package that pins a dependency the package index does not have; the file lists the rest).

``python tests/conformance/envs.py [component ...]`` builds them ahead of the tests
(``make conformance-envs``); the fixtures call :func:`ensure_env` all the same.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV_DIR = HERE / "envs"
COMPLETE = ".complete"


def cache_root() -> Path:
    default = Path.home() / ".cache" / "aistack-conformance"
    return Path(os.environ.get("AISTACK_CONFORMANCE_CACHE", default)).expanduser()


def components() -> list[str]:
    return sorted(p.stem for p in ENV_DIR.glob("*.txt"))


def requirements(component: str) -> Path:
    path = ENV_DIR / f"{component}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no environment file for {component!r}: {path}")
    return path


NO_DEPS = "# --no-deps"


def lines(component: str) -> list[tuple[str, bool]]:
    """``(requirement, no_deps)`` of the component's file, ``-r`` includes expanded."""
    out: list[tuple[str, bool]] = []
    for raw in requirements(component).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            out += lines(Path(line[3:].strip()).stem)
            continue
        out.append((line, raw.rstrip().endswith(NO_DEPS)))
    return out


def files(component: str) -> list[Path]:
    """The component's file and every file it includes."""
    out = [requirements(component)]
    for raw in out[0].read_text().splitlines():
        if raw.strip().startswith("-r "):
            out += files(Path(raw.strip()[3:].split("#", 1)[0].strip()).stem)
    return out


def env_path(component: str) -> Path:
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in files(component)))
    return cache_root() / f"{component}-{digest.hexdigest()[:12]}"


def pinned(component: str, package: str) -> str:
    """The version ``package`` is pinned to (``package==X``) in the component's file."""
    for line, _no_deps in lines(component):
        name, sep, version = line.partition("==")
        base = name.split("[", 1)[0].strip().lower().replace("_", "-")
        if sep and base == package.lower().replace("_", "-"):
            return version.split(";", 1)[0].strip()
    raise LookupError(f"{package} is not pinned with == in {requirements(component)}")


def ensure_env(component: str) -> Path:
    """The component's virtualenv, built once (under a lock, so parallel callers wait)."""
    target = env_path(component)
    if (target / COMPLETE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{component}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE).exists():
            return target
        if target.exists():
            shutil.rmtree(target)  # an interrupted build: start again
        started = time.monotonic()
        print(f"conformance: building the {component} environment in {target}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        pip = [str(target / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", "--quiet", "--upgrade", "pip"], check=True)
        reqs = lines(component)
        locked = target / "requirements.txt"
        locked.write_text("".join(f"{line}\n" for line, no_deps in reqs if not no_deps))
        env = {**os.environ, "PIP_NO_INPUT": "1"}
        subprocess.run([*pip, "install", "--quiet", "-r", str(locked)], check=True, env=env)
        last = [line for line, no_deps in reqs if no_deps]
        if last:
            subprocess.run([*pip, "install", "--quiet", "--no-deps", *last], check=True, env=env)
        (target / COMPLETE).write_text(f"{time.monotonic() - started:.0f}s\n")
        print(
            f"conformance: {component} environment ready in {time.monotonic() - started:.0f} s",
            file=sys.stderr,
        )
    return target


def python(component: str) -> Path:
    return ensure_env(component) / "bin" / "python"


def bin_dir(component: str) -> Path:
    return ensure_env(component) / "bin"


if __name__ == "__main__":
    # Builds are mostly downloads and unpacking: a few at once finish sooner on a new machine.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        for path in pool.map(ensure_env, sys.argv[1:] or components()):
            print(path)
