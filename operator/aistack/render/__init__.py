"""Render: a validated AIStack plus license decisions in, Kubernetes manifests out.

Pure: no API calls, no clock, no environment, no globals that change. Python computes the
values (names, labels, arguments, checksums); Jinja2 templates shipped in the package lay
out the objects. Every value a user controls reaches a template through ``tojson`` so it
can never change the YAML structure.
"""

from __future__ import annotations

from aistack.render.components import COMPONENTS, Component, endpoints, render
from aistack.render.config import RenderConfig
from aistack.render.render import render_yaml

__all__ = ["COMPONENTS", "Component", "RenderConfig", "endpoints", "render", "render_yaml"]
