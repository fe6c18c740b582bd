"""The Prometheus Operator PodMonitors of the parts that serve metrics."""

from __future__ import annotations

from aistack import names
from aistack.api.v1alpha1 import AIStack
from aistack.components import Scrape, namespace_of
from aistack.render.common import Manifest, fill_template


def render_monitors(
    stack: AIStack, monitors: list[tuple[str, dict[str, str], Scrape]]
) -> list[Manifest]:
    """A Prometheus Operator PodMonitor per part: its name (the part's), the labels of its
    pods and where they serve metrics. Targets carry the stack's label."""
    stack_name = stack.metadata.name
    monitoring = stack.spec.monitoring
    return fill_template(
        "monitoring.yaml.j2",
        namespace=namespace_of(stack),
        labels={
            **dict(monitoring.labels),
            **names.common_labels(stack_name, "monitoring", "aistack"),
        },
        interval=monitoring.interval,
        target_labels=[names.STACK_LABEL],
        monitors=[
            {"name": names.part(stack_name, part), "selector": selector, "scrape": scrape}
            for part, selector, scrape in monitors
        ],
    )
