"""Fixtures shared by the conformance suite (``make conformance``).

Each component's fixtures live in ``fixtures_<component>.py``; they are loaded here so that
every test module can use them. The suite needs no cluster: it starts the real programs on
this machine, from what ``aistack render`` produced.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from harness import HostMap  # noqa: E402

# Each component's fixtures (fixtures_<component>.py) join this conftest's namespace, where
# pytest finds them; a fixture of one component may use another's.
for _path in sorted(HERE.glob("fixtures_*.py")):
    _module = importlib.import_module(_path.stem)
    globals().update({k: v for k, v in vars(_module).items() if not k.startswith("_")})


@pytest.fixture(scope="session")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Work directories and logs of every process the suite starts."""
    return tmp_path_factory.mktemp("conformance")


@pytest.fixture(scope="session")
def log_dir(suite_dir: Path) -> Path:
    path = suite_dir / "logs"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def hosts(suite_dir: Path) -> HostMap:
    """One name-to-loopback map for the whole suite: every component's Services resolve."""
    return HostMap(suite_dir / "hosts")
