"""The settings of a running operator (`aistack run`), in one object.

The CLI builds them from its arguments and hands them to the kopf wiring once
(``handlers.use_settings``), before the operator starts; the reconciler and the webhook
read them from there. Nothing sets them anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aistack.components import RenderConfig
from aistack.hub import HubClient
from aistack.limits import DEFAULT_BURST, DEFAULT_QPS, DEFAULT_RESYNC, DEFAULT_WORKERS


@dataclass(frozen=True)
class OperatorSettings:
    #: Installation defaults that shape every stack's manifests (images, cluster domain).
    config: RenderConfig = field(default_factory=RenderConfig)
    #: The kubeconfig to use (None: the current one, or in-cluster credentials).
    kubeconfig: str | None = None
    #: Stacks reconciled at the same time.
    workers: int = DEFAULT_WORKERS
    #: Average API requests per second, at most (0: no limit), and requests at once above.
    api_qps: float = DEFAULT_QPS
    api_burst: int = DEFAULT_BURST
    #: Every stack is reconciled again this often, in seconds (0: never).
    resync: float = DEFAULT_RESYNC
    #: Where licenses the catalog does not know are looked up (None: nowhere).
    hub: HubClient | None = None
