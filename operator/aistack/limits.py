"""Defaults of the operator's own limits (`aistack run --workers/--api-qps/--api-burst`).

Its own module so the CLI can show them without importing the Kubernetes client.
"""

#: Stacks reconciled at the same time (a reconcile mostly waits for the API server).
DEFAULT_WORKERS = 16
#: Average API requests per second the operator sends, at most (a token bucket).
DEFAULT_QPS = 100.0
#: Requests at once above the average.
DEFAULT_BURST = 200
#: Default period of the resync: every stack is reconciled again this often, jittered,
#: even when no watch event came (a safety net; a converged stack costs no API call).
DEFAULT_RESYNC = 300.0
