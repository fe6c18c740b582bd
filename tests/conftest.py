"""Shared pytest options and fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    # Registered here, at the tests' root, so that the option works whichever tests
    # the command line names (pytest reads options only from the root conftest).
    group = parser.getgroup("aistack-e2e", "aistack end-to-end tests")
    group.addoption(
        "--cluster",
        choices=("local", "kind", "existing"),
        default=None,
        help=(
            "Kubernetes cluster for the e2e tests: local (host processes via "
            "hack/local-cluster.sh, no Docker), kind (pytest-kind, needs Docker) "
            "or existing ($KUBECONFIG). Env: AISTACK_E2E_CLUSTER. "
            "Default: kind if a Docker engine answers, else local."
        ),
    )
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current renderer instead of comparing",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))
