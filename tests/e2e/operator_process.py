"""The operator as a real process for e2e tests: `aistack run` against the test cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class OperatorProcess:
    """Starts, stops and restarts `aistack run`; its log goes to a file tests can read."""

    def __init__(self, env: dict[str, str], log_dir: Path, args: Sequence[str] = ()) -> None:
        self.env = env
        self.log_dir = log_dir
        # Several operators run side by side in the tests: no fixed metrics port unless a
        # test asks for one.
        self.args = list(args) if "--metrics-port" in args else [*args, "--metrics-port", "0"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = log_dir / "operator-0.log"

    def start(self) -> None:
        assert self.proc is None, "operator already running"
        self.log_path = self.log_dir / f"operator-{self.starts}.log"
        self.starts += 1
        log = self.log_path.open("wb")
        exe = Path(sys.executable).parent / "aistack"
        self.proc = subprocess.Popen(
            [str(exe), "run", "--verbose", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        log.close()
        # kopf needs a moment to list and watch; tests then wait for what they expect.
        time.sleep(2)
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited at start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def writes(self) -> list[str]:
        """Write requests the operator's own client sent, from its debug log."""
        out = []
        for line in self.log().splitlines():
            for verb in ("PATCH", "POST", "PUT", "DELETE"):
                if f'"{verb} /' in line:
                    out.append(line.split('"', 2)[1])
        return out
