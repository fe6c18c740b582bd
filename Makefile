# aistack-operator: the two commands a newcomer needs are `make demo` and `make test`.
# Everything they need is installed by the targets below, idempotently and with caches.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help venv lint unit integration e2e elastic test crds check-crds demo demo-down cluster-tools clean \
	chart chart-crds chart-images docs bench bench-elastic conformance conformance-envs gpu-smoke \
	lint-manifests promtool-rules argocd-tools gitops keda-tools demo-elastic ollama-tools

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create .venv with the operator and its dev tools

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check operator tests bench hack/demo_elastic.py
	$(BIN)/ruff format --check operator tests bench hack/demo_elastic.py
	$(BIN)/mypy
	$(BIN)/mypy bench/analysis.py bench/bench.py bench/elastic.py hack/demo_elastic.py

unit: $(STAMP) ## unit tests: API, CRDs, renderer, CLI (no cluster)
	$(BIN)/pytest tests --ignore=tests/e2e --ignore=tests/conformance --ignore=tests/integration $(PYTEST_ARGS)

integration: $(STAMP) cluster-tools ## the reconcile against a real API server and etcd, without kopf (minutes)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

cluster-tools: ## build the local control plane (kube-apiserver, etcd, kwok, helm) and LWS from Go modules
	hack/build-tools.sh
	hack/build-tools.sh --lws

# The local control plane unless another is asked for; strict (a skip fails) when CI=true.
AISTACK_E2E_CLUSTER ?= local
export AISTACK_E2E_CLUSTER

#: The e2e tests that need a real KEDA and Prometheus beside the local cluster (`make elastic`).
ELASTIC_TESTS := tests/e2e/test_keda_infra.py tests/e2e/test_elastic.py

e2e: $(STAMP) cluster-tools ## end-to-end tests against a real local API server
	$(BIN)/pytest tests/e2e --ignore=tests/e2e/test_argocd.py $(addprefix --ignore=,$(ELASTIC_TESTS)) $(PYTEST_ARGS)

elastic: $(STAMP) cluster-tools keda-tools ## elastic serving with a real KEDA and Prometheus: a local cluster of its own (up --keda)
	$(BIN)/pytest $(ELASTIC_TESTS) $(PYTEST_ARGS)

argocd-tools: ## build Argo CD (argocd, its controller and repo-server; Go 1.27 from the module proxy) and install Redis
	hack/build-tools.sh --argocd
	hack/gitops-deps.sh

keda-tools: ## build KEDA (keda-operator, keda-metrics-apiserver; Go 1.27.4 from the module proxy) and the Prometheus server, for local-cluster.sh up --keda
	hack/build-tools.sh --keda
	hack/build-tools.sh --prometheus

gitops: $(STAMP) cluster-tools argocd-tools ## GitOps with a real Argo CD: examples/argocd synced from a local git server
	$(BIN)/pytest tests/e2e/test_argocd.py $(PYTEST_ARGS)

conformance-envs: $(STAMP) ## build (or reuse) the conformance suite's cached environments and stores
	$(BIN)/python tests/conformance/envs.py
	hack/conformance-stores.sh >/dev/null

ollama-tools: ## build Ollama (the CPU model engine, from its Go module with cgo) for the conformance suite
	hack/build-tools.sh --ollama

conformance: $(STAMP) conformance-envs ollama-tools ## the real vLLM, Ray, MLflow, LiteLLM and Ollama started from what we render
	$(BIN)/pytest tests/conformance $(PYTEST_ARGS)

gpu-smoke: $(STAMP) ## on a GPU machine: real vLLM serves a tiny local model behind the real gateway
	$(BIN)/python tests/conformance/gpu_smoke.py $(GPU_SMOKE_ARGS)

TEST_STAGES := lint lint-manifests promtool-rules unit chart integration e2e conformance gitops elastic

# The stages in order, stopping at the first that fails; each one's time is printed, and
# all of them at the end, so a slow run shows where its time went. Ollama (for the
# conformance stage), Argo CD, KEDA and the Prometheus server, the biggest builds, build
# meanwhile at low priority, one after the other (their log: .cache/background-build.log);
# the conformance, gitops and elastic stages wait for theirs (each build holds a lock).
test: ## everything CI runs
	@start=$$SECONDS; times=""; mkdir -p .cache; \
	setsid nice -n 10 sh -c 'hack/build-tools.sh --ollama; hack/build-tools.sh --argocd; \
	  hack/build-tools.sh --keda; \
	  hack/build-tools.sh --prometheus' >.cache/background-build.log 2>&1 & bg=$$!; \
	trap 'kill -- -$$bg 2>/dev/null || true' EXIT; \
	for stage in $(TEST_STAGES); do \
	  t0=$$SECONDS; \
	  $(MAKE) --no-print-directory $$stage || { echo "make test: $$stage failed after $$((SECONDS - t0)) s"; exit 1; }; \
	  times="$$times $$stage=$$((SECONDS - t0))s"; \
	  echo "make test: $$stage took $$((SECONDS - t0)) s"; \
	done; \
	echo "make test: all passed in $$((SECONDS - start)) s:$$times"

bench: $(STAMP) cluster-tools ## benchmark: operator vs raw `kubectl apply` (table, bench/results/*.json, *.png)
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

bench-elastic: $(STAMP) cluster-tools keda-tools conformance-envs ## benchmark: the gateway's hold and KEDA's scaling, real programs (table, bench/results/elastic.json)
	$(BIN)/python bench/elastic.py $(BENCH_ARGS)

crds: $(STAMP) ## regenerate crds/ from the API models
	$(BIN)/aistack crds --output-dir crds

chart: $(STAMP) cluster-tools ## helm lint and the chart's template tests (with the built helm)
	"$$(hack/build-tools.sh --print-bin-dir)/helm" lint --strict charts/aistack-operator
	AISTACK_REQUIRE_HELM=1 $(BIN)/pytest tests/test_chart.py $(PYTEST_ARGS)

lint-manifests: $(STAMP) cluster-tools ## kube-score and checkov over the examples' renders and the chart (hack/manifest-lint.yaml)
	hack/lint-manifests.sh

promtool-rules: $(STAMP) ## promtool check/test rules on the chart's alerts, and their tests (builds promtool)
	hack/build-tools.sh --promtool >/dev/null
	"$$(hack/build-tools.sh --promtool --print-bin-dir)/promtool" check rules charts/aistack-operator/files/alerts.yaml
	"$$(hack/build-tools.sh --promtool --print-bin-dir)/promtool" test rules tests/alerts/*.test.yaml
	AISTACK_REQUIRE_PROMTOOL=1 $(BIN)/pytest tests/test_alerts.py $(PYTEST_ARGS)

chart-crds: ## copy crds/ into the Helm chart (after `make crds`)
	cp crds/*.yaml charts/aistack-operator/crds/

chart-images: $(STAMP) ## rewrite the chart's image settings from the component registry
	$(BIN)/python -m aistack.chartgen

docs: $(STAMP) ## regenerate docs/api.md from the CRD schema
	$(BIN)/python -m aistack.apidocs > docs/api.md

demo: $(STAMP) cluster-tools ## local cluster + operator + the quickstart stack, then its status
	hack/demo.sh up

demo-elastic: $(STAMP) cluster-tools keda-tools ## the demo with KEDA: examples/autoscaling.yaml scaled by the real KEDA (simulated metrics), step by step
	AISTACK_KEDA=1 hack/demo.sh up
	$(BIN)/python hack/demo_elastic.py

demo-down: ## stop the demo cluster and everything it started
	hack/demo.sh down

clean: ## remove the virtualenv and caches (not the tool cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
