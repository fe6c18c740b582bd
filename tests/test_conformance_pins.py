"""One pin per component: the default images and the conformance suite's environments run
the same program versions (a default image moves only with the suite)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from aistack.components import COMPONENTS, VERSIONS

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


def test_every_environment_is_pinned_exactly() -> None:
    # Every requirement line pins one version (==): an environment that floats would not be
    # the image's package set on the next run.
    for component in envs.components():
        for line, _no_deps in envs.lines(component):
            assert "==" in line, f"{component}: {line!r} is not pinned with =="
