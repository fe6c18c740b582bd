"""Defaults of the operator's own limits (`aistack run --workers/--api-qps/--api-burst`).

Its own module so the CLI can show them without importing the Kubernetes client.
"""

#: Stacks reconciled at the same time (a reconcile mostly waits for the API server).
DEFAULT_WORKERS = 16
#: Average API requests per second the operator sends, at most (a token bucket).
DEFAULT_QPS = 100.0
#: Requests at once above the average.
DEFAULT_BURST = 200
