"""Container image references: what repository an image is, and whether a pattern covers it.

Pure. A reference is ``[registry/]path[:tag][@digest]``; Docker Hub's names are spelled
several ways (``vllm/vllm-openai``, ``docker.io/vllm/vllm-openai``,
``index.docker.io/vllm/vllm-openai``; ``ubuntu`` is ``docker.io/library/ubuntu``), and a
registry's host name is case-insensitive, so both sides are normalised before they are
compared. Patterns are a LicensePolicy's ``images.allow`` entries: a repository (any tag
or digest), an exact reference (that tag, or that digest), or a prefix ending in ``/*``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference, normalised: ``repository`` includes its registry."""

    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.repository}{tag}{digest}"


def _split(name: str) -> tuple[str, str]:
    """(registry, path): the first component is a registry when it looks like a host."""
    first, _, rest = name.partition("/")
    if "." in first or ":" in first or first == "localhost":
        registry, path = first.lower(), rest
    else:
        registry, path = DOCKER_HUB, name
    return (DOCKER_HUB if registry in _HUB_ALIASES else registry), path


def _repository(name: str) -> str:
    registry, path = _split(name)
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"  # Docker Hub's official images
    return f"{registry}/{path}"


def _prefix(name: str) -> str:
    """A ``<prefix>/*`` pattern's prefix: a registry, or a registry and a path below it."""
    registry, path = _split(name)
    return f"{registry}/{path}" if path else registry


def parse_image(reference: str) -> ImageRef:
    """The repository, tag and digest of an image reference (already well-formed: the API's
    image pattern refused anything else)."""
    name, _, digest = reference.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return ImageRef(_repository(name), tag, digest or None)


def matches(pattern: str, image: ImageRef) -> bool:
    """Whether one ``images.allow`` entry covers the image."""
    if pattern.endswith("/*"):
        prefix = _prefix(pattern[:-2])
        return image.repository.startswith(prefix + "/")
    want = parse_image(pattern)
    if want.repository != image.repository:
        return False
    if want.digest is not None:
        return want.digest == image.digest
    if want.tag is not None:
        # With a digest the runtime pulls the digest, whatever the tag says: a pattern that
        # names a tag covers that tag only.
        return want.tag == image.tag and image.digest is None
    return True


def covered(image: str, patterns: Iterable[str]) -> str | None:
    """The first pattern that covers ``image``, or None."""
    ref = parse_image(image)
    return next((p for p in patterns if matches(p, ref)), None)
