"""Render: a validated AIStack plus license decisions in, Kubernetes manifests out.

Pure: no API calls, no clock, no environment, no globals that change. Python computes the
values (names, labels, arguments, checksums); Jinja2 templates shipped in the package lay
out the objects. Every value a user controls reaches a template through ``tojson`` so it
can never change the YAML structure. What each part is (its ports, names, endpoints,
default image) comes from the registry, ``aistack.components``.
"""

from __future__ import annotations

from aistack.render.common import render_yaml
from aistack.render.stack import RENDERERS, render

__all__ = ["RENDERERS", "render", "render_yaml"]
