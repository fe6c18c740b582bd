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


def test_no_function_of_the_operator_is_above_15_by_radon() -> None:
    """radon counts what ruff's C901 does not (each `and`/`or`, a comprehension's `if`):
    both hold every function to 15."""
    from radon.complexity import cc_visit

    over = [
        f"{path.relative_to(ROOT)}:{block.lineno} {block.name} ({block.complexity})"
        for path in sorted((ROOT / "operator" / "aistack").rglob("*.py"))
        for block in cc_visit(path.read_text())
        # Methods are Functions too; a Class block only sums its methods.
        if block.complexity > 15 and type(block).__name__ == "Function"
    ]
    assert over == []


def test_radon_sees_boolean_operators() -> None:
    from radon.complexity import cc_visit

    # One path, plus one per operand after the first: 16 operands are 16, over the bound.
    clauses = " and ".join(f"x == {i}" for i in range(16))
    (block,) = cc_visit(f"def f(x):\n    return {clauses}\n")
    assert block.complexity == 16
