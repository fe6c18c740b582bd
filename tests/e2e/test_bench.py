"""The benchmark, small: it must keep working, and what it counts must hold.

`make bench` is not run by CI (it takes tens of minutes and its figures are not pass/fail),
but this runs the same command at a small size on its own fresh clusters and checks the
parts of its output that are facts, not timings: every stack got Ready on both sides, the
operator wrote each child once, and wrote nothing while everything was converged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "bench.py"),
         "--runs", "2", "--sizes", "3", "--idle", "20", "--out", str(out), "--label", "smoke"],
        capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
    assert "measurement" in proc.stdout  # the table was printed
    assert (out / "smoke.png").stat().st_size > 10_000
    return json.loads((out / "smoke.json").read_text())


def test_every_stack_got_ready_on_both_sides(results: dict) -> None:
    for mode in ("operator", "limit"):
        single = results["single"][mode]
        assert single["completed"] == 2, single
        assert 0 < single["exists_p50"] <= single["ready_p50"]
        many = results["many"]["3"][mode]
        assert many["exists"] is not None, many
        assert many["ready"] is not None, many
    # Every child the renderer gives the benchmark's stack, for each of the 3 stacks.
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import bench

    per_stack = len(bench.rendered(["one"], "bench"))
    assert per_stack >= 14  # models, Ray, MLflow, gateway and their policies at least
    assert results["many"]["3"]["operator"]["children"] == 3 * per_stack


def test_the_operator_writes_each_child_once(results: dict) -> None:
    op = results["many"]["3"]["operator"]
    writes = op["writes"]
    assert writes["child_writes"] == writes["children"], writes["repeat_child_writes"]
    assert writes["other_writes"] == 0
    # The limit writes each child exactly once too: the audit log is read right.
    assert results["many"]["3"]["limit"]["writes"]["writes_per_child"] == 1.0


def test_the_operator_is_silent_when_converged(results: dict) -> None:
    op = results["many"]["3"]["operator"]
    assert op["idle_writes"] == 0, op["idle_requests"]
    assert op["operator_peak_rss_mb"] > 0
    assert op["operator_cpu_seconds"] > 0


def test_the_summary_compares_with_the_limit(results: dict) -> None:
    names = {row["name"] for row in results["summary"]}
    assert "1 stack, children exist, p50" in names
    assert "3 stacks, all Ready" in names
    row = next(r for r in results["summary"] if r["name"] == "3 stacks, all Ready")
    assert row["operator"] > 0
    assert row["limit"] > 0
