"""`make lint` holds every function of the operator to cyclomatic complexity 15 (ruff's
C901 with the project's configuration): a function one branch over the bound fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import ROOT

RUFF = Path(sys.executable).parent / "ruff"


def branches(n: int) -> str:
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(n))
    return f"def f(x: int) -> int:\n{body}    return -1\n"


def check(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "operator" / "aistack" / "sample.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    return subprocess.run(
        [str(RUFF), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
         "--select", "C901", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_a_function_over_complexity_15_fails_lint(tmp_path: Path) -> None:
    # n ifs: complexity n + 1.
    assert check(branches(14), tmp_path / "ok").returncode == 0
    over = check(branches(15), tmp_path / "over")
    assert over.returncode == 1 and "C901" in over.stdout and "(16 > 15)" in over.stdout


def test_the_operator_package_is_within_the_bound() -> None:
    proc = subprocess.run(
        [str(RUFF), "check", "--no-cache", "--select", "C901", str(ROOT / "operator")],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout
