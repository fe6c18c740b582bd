"""The chart's alerts and dashboard: promtool checks and unit-tests the alerting rules
(charts/aistack-operator/files/alerts.yaml, tests/alerts/*.test.yaml), and every metric the
rules and the dashboard (files/dashboard.json) read is one the operator or vLLM exports.

Needs the `promtool` that `hack/build-tools.sh --promtool` builds (or AISTACK_PROMTOOL).
Without it the promtool tests skip, unless CI=true or AISTACK_REQUIRE_PROMTOOL=1 (set by
`make promtool-rules`, which builds promtool first). The metric-name tests need nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "aistack-operator"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
ALERT_TESTS = sorted((ROOT / "tests" / "alerts").glob("*.test.yaml"))

# ---------------------------------------------------------------- the metric lists

#: The operator's metrics (operator/aistack/metrics.py), as /metrics exposes them: name ->
#: (type, label names). The contract the alerts, the dashboard and docs/observability.md
#: are written against.
OPERATOR_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "aistack_reconcile_duration_seconds": ("histogram", ()),
    "aistack_reconciles_total": ("counter", ("result",)),
    "aistack_queue_depth": ("gauge", ()),
    "aistack_api_requests_total": ("counter", ("verb", "code")),
    "aistack_stacks": ("gauge", ("phase",)),
    "aistack_stack_ready": ("gauge", ("namespace", "stack")),
    "aistack_license_verdicts": ("gauge", ("namespace", "stack", "kind", "decision")),
    "aistack_model_replicas": ("gauge", ("namespace", "stack", "model", "state")),
    "aistack_webhook_admissions_total": ("counter", ("result",)),
    "aistack_hub_lookups_total": ("counter", ("result",)),
}

#: prometheus_client's default collectors that the dashboard reads (of the operator).
PROCESS_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "process_resident_memory_bytes": ("gauge", ()),
    "process_cpu_seconds_total": ("counter", ()),
}

#: vLLM's metrics (vLLM 0.34.0, vllm/v1/metrics/loggers.py) that the dashboard reads, as
#: its /metrics exposes them (counters with `_total`): the list a check against the real
#: vLLM (the conformance suite) compares with.
VLLM_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "vllm:num_requests_running": ("gauge", ("model_name", "engine")),
    "vllm:num_requests_waiting": ("gauge", ("model_name", "engine")),
    "vllm:generation_tokens_total": ("counter", ("model_name", "engine")),
    "vllm:prompt_tokens_total": ("counter", ("model_name", "engine")),
    "vllm:time_to_first_token_seconds": ("histogram", ("model_name", "engine")),
    "vllm:kv_cache_usage_perc": ("gauge", ("model_name", "engine")),
}

#: Prometheus' own series about each target.
PROMETHEUS_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {"up": ("gauge", ())}

#: Labels Prometheus adds to every scraped series (the ServiceMonitor's targets).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}

#: The job label the chart's ServiceMonitor sets, which AIStackOperatorDown selects.
JOB = "aistack-operator"


def series_names(metrics: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, set[str]]:
    """Every series name a family exposes -> its label names (a histogram's `_bucket`
    with `le`)."""
    out: dict[str, set[str]] = {}
    for name, (kind, labels) in metrics.items():
        if kind == "histogram":
            out[f"{name}_bucket"] = {*labels, "le"}
            out[f"{name}_sum"] = set(labels)
            out[f"{name}_count"] = set(labels)
        else:
            out[name] = set(labels)
    return out


# ---------------------------------------------------------------- PromQL


_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
   |(?P<range>\[[^\]]*\])
   |(?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*\b)
   |(?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
   |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
   |(?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=(){},@])
   |(?P<space>\s+)
    """,
    re.VERBOSE,
)
#: Words that are no metric name where they stand alone.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
#: Words followed by a list of label names in parentheses.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
#: Aggregations, which may take `by (...)` / `without (...)` before their argument.
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
#: Grafana's variables, as a query sends them.
_GRAFANA = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@dataclass
class Selector:
    metric: str
    labels: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m, f"cannot read PromQL at {expr[pos:]!r} in {expr!r}"
        pos = m.end()
        if m.lastgroup != "space":
            out.append((str(m.lastgroup), m.group()))
    return out


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression: metric names and matched labels.

    Enough of PromQL for the queries we write: strings, ranges, durations, numbers,
    function calls, aggregations with by/without, vector matching, `{__name__="..."}`."""
    for var, value in _GRAFANA.items():
        expr = expr.replace(var, value)
    toks = tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in _LABEL_LISTS and nxt == "(":
            i = _close(toks, i + 1)
        elif kind == "ident" and (nxt == "(" or (text in _AGGREGATIONS and nxt in _LABEL_LISTS)):
            pass  # a function or an aggregation: its arguments follow
        elif kind == "ident" and text not in _KEYWORDS and text not in _LABEL_LISTS:
            sel = Selector(text)
            if nxt == "{":
                i = _matchers(toks, i + 1, sel)
            found.append(sel)
        elif text == "{":  # {__name__="x", ...} without a name in front
            sel = Selector("")
            i = _matchers(toks, i, sel)
            found.append(sel)
        i += 1
    return found


def _close(toks: list[tuple[str, str]], open_at: int) -> int:
    """Index of the `)` that closes the `(` at open_at."""
    depth = 0
    for j in range(open_at, len(toks)):
        depth += {"(": 1, ")": -1}.get(toks[j][1], 0)
        if depth == 0:
            return j
    raise AssertionError("unbalanced parentheses")


def _matchers(toks: list[tuple[str, str]], open_at: int, sel: Selector) -> int:
    """Reads `{label op "value", ...}` from open_at into sel; returns the `}`'s index."""
    j = open_at + 1
    while toks[j][1] != "}":
        kind, text = toks[j]
        if kind == "ident":
            op, value = toks[j + 1][1], toks[j + 2][1]
            assert op in ("=", "!=", "=~", "!~") and toks[j + 2][0] == "string", toks[j : j + 3]
            if text == "__name__" and op == "=":
                sel.metric = value[1:-1]
            else:
                sel.labels.add(text)
            j += 3
        else:
            assert text == ",", toks[j]
            j += 1
    return j


def test_the_promql_reader() -> None:
    def names(expr: str) -> list[tuple[str, set[str]]]:
        return [(s.metric, s.labels) for s in selectors(expr)]

    assert names(
        'histogram_quantile(0.9, sum by (le, model_name) (rate(vllm:ttft_bucket{a=~"$x",b!="}"}'
        "[$__rate_interval] offset 5m)))"
    ) == [("vllm:ttft_bucket", {"a", "b"})]
    assert names(
        "max by (namespace) (up{job='j'}) == 0 or absent(up) and on(pod) group_left(node) "
        'x > bool 1e3 unless {__name__="y", z="1"} * -inf'
    ) == [("up", {"job"}), ("up", set()), ("x", set()), ("y", {"z"})]
    assert names(
        "topk by (le) (3, sum without (instance) (rate(a_total[5m:1m]))) / ignoring(code) b"
    ) == [
        ("a_total", set()),
        ("b", set()),
    ]


# ---------------------------------------------------------------- the rules and dashboard


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query: each panel's targets and the template variables'
    `label_values(SELECTOR, label)`."""
    for p in panels(dash):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert m, f"variable {var['name']}: {query!r} is not label_values(selector, label)"
        yield f"variable {var['name']}", m.group(1)


EXPECTED_ALERTS = {
    "AIStackOperatorDown",
    "AIStackNotReady",
    "AIStackLicenseBlocked",
    "AIStackModelBelowDesiredReplicas",
    "AIStackReconcileErrors",
    "AIStackWebhookRefusalsSpiking",
}


def test_the_alerts_and_their_annotations() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    assert len(rules) == len(EXPECTED_ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
    by_name = {r["alert"]: r for r in rules}
    assert by_name["AIStackNotReady"]["for"] == "15m"
    assert by_name["AIStackReconcileErrors"]["for"] == "10m"
    assert by_name["AIStackOperatorDown"]["labels"]["severity"] == "critical"
    # The chart replaces the number after the refusal alert's last `>` (prometheusrule.yaml).
    assert re.search(r">\s*0\.1\s*$", by_name["AIStackWebhookRefusalsSpiking"]["expr"])


def test_every_metric_the_alerts_read_is_the_operators() -> None:
    known = series_names(OPERATOR_METRICS | PROMETHEUS_METRICS)
    for rule in alert_rules():
        sels = selectors(rule["expr"])
        assert sels, rule["alert"]
        for sel in sels:
            assert sel.metric in known, f"{rule['alert']}: unknown metric {sel.metric}"
            assert sel.labels <= known[sel.metric] | TARGET_LABELS, (rule["alert"], sel)
    down = next(r for r in alert_rules() if r["alert"] == "AIStackOperatorDown")
    assert f'up{{job="{JOB}"}}' in down["expr"], "the job the ServiceMonitor sets"


def test_every_metric_the_dashboard_queries_is_known() -> None:
    known = series_names(OPERATOR_METRICS | PROCESS_METRICS | VLLM_METRICS | PROMETHEUS_METRICS)
    read: set[str] = set()
    queries = list(dashboard_queries(dashboard()))
    assert len(queries) > 10
    for where, expr in queries:
        sels = selectors(expr)
        assert sels, where
        for sel in sels:
            assert sel.metric in known, (
                f"{where}: {sel.metric} is neither the operator's nor vLLM's"
            )
            assert sel.labels <= known[sel.metric] | TARGET_LABELS, (where, sel)
            read.add(sel.metric)
    # The panels the dashboard promises: stacks, reconcile latency, queue, license
    # decisions; per model vLLM's running/waiting requests, tokens, TTFT and KV cache.
    for metric in (
        "aistack_stacks",
        "aistack_reconcile_duration_seconds_bucket",
        "aistack_queue_depth",
        "aistack_license_verdicts",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:kv_cache_usage_perc",
    ):
        assert metric in read, f"no panel reads {metric}"


def test_the_dashboards_model_queries_follow_the_model_name_variable() -> None:
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model_name"]
    assert model["multi"] and model["includeAll"] and model["allValue"] == ".*"
    for where, expr in dashboard_queries(dash):
        if where.startswith("panel") and "vllm:" in expr:
            for sel in selectors(expr):
                assert f'{sel.metric}{{model_name=~"$model_name"}}' in expr, where
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels(dash):
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p.get("description"), f"{p['title']}: say what the panel shows"
    assert dash["uid"] == "aistack-operator"


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in ALERT_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [ALERTS]
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
                for alert in check.get("exp_alerts") or []:
                    # Alertmanager gets these: the test says what they read.
                    assert set(alert["exp_annotations"]) == {"summary", "description"}
    assert fires == EXPECTED_ALERTS, f"never seen firing: {EXPECTED_ALERTS - fires}"
    assert quiet == EXPECTED_ALERTS, f"never seen quiet: {EXPECTED_ALERTS - quiet}"


def test_the_contract_is_what_the_operator_exports() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from aistack import metrics

    exported = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            name = obj._name + ("_total" if obj._type == "counter" else "")
            exported[name] = (obj._type, tuple(obj._labelnames))
    assert exported == OPERATOR_METRICS


# ---------------------------------------------------------------- promtool


@cache
def promtool_path() -> str | None:
    if os.environ.get("AISTACK_PROMTOOL"):
        return os.environ["AISTACK_PROMTOOL"]
    try:
        bin_dir = subprocess.run(
            [str(ROOT / "hack" / "build-tools.sh"), "--promtool", "--print-bin-dir"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    promtool = Path(bin_dir) / "promtool"
    return str(promtool) if promtool.exists() else None


@pytest.fixture(scope="module")
def promtool() -> str:
    path = promtool_path()
    if path is None:
        if os.environ.get("CI") == "true" or os.environ.get("AISTACK_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not built: run hack/build-tools.sh --promtool", pytrace=False)
        pytest.skip("promtool is not built (hack/build-tools.sh --promtool; `make promtool-rules`)")
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{out}"
    return out


def test_promtool_checks_the_rules(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS))
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out


@pytest.mark.parametrize("path", ALERT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_of_the_alerts(promtool: str, path: Path) -> None:
    out = run_promtool(promtool, "test", "rules", str(path))
    assert "SUCCESS" in out and "FAILED" not in out, out


def test_the_dashboards_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # As recording rules, promtool parses each query as Prometheus would.
    rules = []
    for i, (_, expr) in enumerate(dashboard_queries(dashboard())):
        for var, value in {**_GRAFANA, "$model_name": ".*", "${datasource}": ""}.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool(
        promtool, "check", "rules", str(path)
    )


def test_the_rendered_prometheus_rule_passes_promtool(promtool: str, tmp_path: Path) -> None:
    # The rules as the chart renders them, with a threshold and labels from the values.
    from test_chart import helm_path, one, template

    helm = helm_path()
    if helm is None:
        if os.environ.get("AISTACK_REQUIRE_HELM") == "1":
            pytest.fail("helm is not built: run hack/build-tools.sh", pytrace=False)
        pytest.skip("helm is not built (hack/build-tools.sh; `make chart`)")
    values = {
        "monitoring": {
            "prometheusRule": {
                "enabled": True,
                "webhookRefusalsPerSecond": 2.5,
                "alertLabels": {"team": "ml-platform"},
            }
        }
    }
    spec = one(template(helm, values), "PrometheusRule")["spec"]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_promtool(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(path))
    rules = {r["alert"]: r for g in spec["groups"] for r in g["rules"]}
    assert rules["AIStackWebhookRefusalsSpiking"]["expr"].endswith("> 2.5")


def test_the_scaledobjects_queries_sum_the_models_servers_as_prometheus_scrapes_them(
    promtool: str, tmp_path: Path
) -> None:
    """Each query the autoscaling example's ScaledObjects send to Prometheus, evaluated by
    promtool over the series of the example's model servers and gateway as the stack's
    PodMonitors label them (namespace, pod, the stack's label; vLLM's model_name, the
    gateway hold's model), plus another stack's and another model's: the model's own, and
    nothing else; a sleeping model's activity counts what the gateway holds for it even
    when its servers are gone (no series at all)."""
    from aistack import names
    from aistack.components import RenderConfig
    from aistack.render import render
    from aistack.render.autoscaling import HELD_SERIES, prometheus_label
    from helpers import all_permitted, example

    s = example(ROOT / "examples" / "autoscaling.yaml")
    config = RenderConfig(keda=True, monitoring_crds=True)
    scaled = [m for m in render(s, all_permitted(s), config) if m["kind"] == "ScaledObject"]
    assert len(scaled) == 2
    stack_label = prometheus_label(names.STACK_LABEL)

    def labels(stack: str, pod: str, **extra: str) -> str:
        more = "".join(f', {k}="{v}"' for k, v in extra.items())
        return f'namespace="default", pod="{pod}", {stack_label}="{stack}"{more}'

    me = s.metadata.name
    series = []
    # Minutes 0-5: chat on two servers, coder on one; minutes 6-10: coder asleep.
    for metric in ("vllm:num_requests_waiting", "vllm:num_requests_running"):
        for stack, model, pod, values in (
            (me, "chat", "a", "3x10"), (me, "chat", "b", "4x10"),
            (me, "coder", "c", "5x5 stale"), ("other", "coder", "d", "100x10"),
        ):  # fmt: skip
            series.append({"series": f"{metric}{{{labels(stack, pod, model_name=model)}}}",
                           "values": values})  # fmt: skip
    for stack, model, values in ((me, "coder", "0x5 2x5"), ("other", "coder", "50x10")):
        series.append({"series": f"{HELD_SERIES}{{{labels(stack, 'gw', model=model)}}}",
                       "values": values})  # fmt: skip
    want = {
        # chat: 3 + 4 waiting; coder: 5 running
        ("chat", "requestswaiting", "2m"): 7,
        ("coder", "requestsrunning", "2m"): 5,
        # coder's activity: held 0 + running 5 + waiting 5; asleep: the 2 held alone
        ("coder", "activity", "2m"): 10,
        ("coder", "activity", "9m"): 2,
    }
    rules, expected = [], []
    for so in scaled:
        model = so["metadata"]["labels"][names.MODEL_LABEL]
        for trigger in so["spec"]["triggers"]:
            record = f"keda:{model}:{trigger['name']}"
            rules.append({"record": record, "expr": trigger["metadata"]["query"]})
    for (model, trigger, at), value in want.items():
        record = f"keda:{model}:{trigger}"
        sample = {"labels": record, "value": value}
        expected.append({"expr": record, "eval_time": at, "exp_samples": [sample]})
    assert {r["record"] for r in rules} == {f"keda:{m}:{t}" for m, t, _ in want}
    (tmp_path / "queries.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "keda", "rules": rules}]})
    )
    (tmp_path / "queries.test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["queries.yaml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": expected}],
    }))  # fmt: skip
    out = run_promtool(promtool, "test", "rules", "queries.test.yaml", cwd=tmp_path)
    assert "SUCCESS" in out
