"""One pin per component: the default images and the conformance suite's environments run
the same program versions (a default image moves only with the suite)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from aistack.components import COMPONENTS, DEFAULT_IMAGES, ENGINES, VERSIONS

sys.path.insert(0, str(Path(__file__).resolve().parent / "conformance"))
import envs

# component environment -> (package pinned in it, version pin, default image): one per
# component of the registry, so a new component needs its environment.
PINS = {c.program: (c.program, c.version, c.default_image) for c in COMPONENTS}


@pytest.mark.parametrize("component", sorted(PINS))
def test_environment_runs_the_default_image_version(component: str) -> None:
    package, version, _image = PINS[component]
    assert envs.pinned(component, package) == version


# Environments of images built on the defaults: each program at the same pin.
DERIVED = {
    "vllm-ray": {"vllm": VERSIONS["vllm"], "ray": VERSIONS["ray"]},
    "mlflow-full": {"mlflow": VERSIONS["mlflow"]},
}


@pytest.mark.parametrize("component", sorted(DERIVED))
def test_derived_environments_run_the_same_versions(component: str) -> None:
    for package, version in DERIVED[component].items():
        assert envs.pinned(component, package) == version


def test_every_environment_is_covered_by_a_pin_test() -> None:
    assert set(envs.components()) == set(PINS) | set(DERIVED)


@pytest.mark.parametrize("component", sorted(PINS))
def test_default_image_tag_carries_the_pinned_version(component: str) -> None:
    _package, version, image = PINS[component]
    tag = image.rpartition(":")[2]
    assert re.fullmatch(rf"v?{re.escape(version)}(-[a-z0-9.]+)?", tag), (image, version)


# Programs the conformance suite builds from their Go module (hack/build-tools.sh) rather
# than installs from PyPI: pinned in hack/versions.env, at the default image's version.
BUILT = {"ollama": "OLLAMA_VERSION"}
VERSIONS_ENV = Path(__file__).resolve().parents[1] / "hack" / "versions.env"


def _versions_env() -> dict[str, str]:
    pairs = re.findall(r"^([A-Z0-9_]+)=(\S+)$", VERSIONS_ENV.read_text(), re.M)
    return dict(pairs)


@pytest.mark.parametrize("program", sorted(BUILT))
def test_built_program_runs_the_default_image_version(program: str) -> None:
    assert _versions_env()[BUILT[program]] == f"v{VERSIONS[program]}"
    (engine,) = [e for e in ENGINES if e.program == program]
    tag = DEFAULT_IMAGES[engine.image].rpartition(":")[2]
    assert tag == VERSIONS[program]


def test_every_program_has_a_pin() -> None:
    assert set(VERSIONS) == set(PINS) | set(BUILT)


def test_every_environment_is_pinned_exactly() -> None:
    # Every requirement line pins one version (==): an environment that floats would not be
    # the image's package set on the next run.
    for component in envs.components():
        for line, _no_deps in envs.lines(component):
            assert "==" in line, f"{component}: {line!r} is not pinned with =="
