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
            "or existing ($KUBECONFIG). Env: AISTACK_E2E_CLUSTER. Default: local."
        ),
    )
    group.addoption(
        "--strict-e2e",
        action="store_true",
        default=None,
        help=(
            "turn every skipped e2e test into a failure (a capability the cluster lacks "
            "is a failed test, not a pass). Env: AISTACK_E2E_STRICT=1; on when CI=true."
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
