"""The e2e suite cannot pass by skipping: in strict mode (on in CI) a skip is a failure.

The e2e conftest (copied verbatim, with the root conftest that registers its options)
runs a test that skips the way a capability check does, in a separate pytest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    e2e = tmp_path / "e2e"
    e2e.mkdir()
    for name in ("conftest.py", "operator_process.py"):
        shutil.copy(TESTS / "e2e" / name, e2e / name)
    (e2e / "test_capability.py").write_text(
        "import pytest\n\n"
        "def test_needs_gpu_nodes():\n"
        "    pytest.skip('no node advertises nvidia.com/gpu')\n\n"
        "def test_plain():\n"
        "    assert True\n"
    )
    return tmp_path


def run(suite: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "AISTACK_E2E_STRICT")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir",
         str(suite), str(suite / "e2e")],
        cwd=suite, env={**environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_in_ci_a_skipped_e2e_test_fails_the_run(suite: Path) -> None:
    proc = run(suite, CI="true")
    assert proc.returncode == 1, proc.stdout
    assert "skipped in strict e2e mode" in proc.stdout
    assert "no node advertises nvidia.com/gpu" in proc.stdout
    assert "aistack e2e: 2 tests ran (1 passed, 1 failed), 0 skipped" in proc.stdout


def test_outside_ci_a_skip_is_a_skip_and_is_counted(suite: Path) -> None:
    proc = run(suite)
    assert proc.returncode == 0, proc.stdout
    assert "aistack e2e: 1 tests ran (1 passed, 0 failed), 1 skipped" in proc.stdout
    assert "strict mode off" in proc.stdout
    strict = run(suite, AISTACK_E2E_STRICT="1")
    assert strict.returncode == 1 and "strict mode on" in strict.stdout
