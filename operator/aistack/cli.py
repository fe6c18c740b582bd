"""The ``aistack`` command: render stacks, print CRDs.

Bad input exits with status 2 and one line per problem naming the file, the document,
the field path and what is wrong; never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml
from pydantic import ValidationError

from aistack import __version__, names
from aistack.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    AIStack,
    ModelSpec,
)
from aistack.components import COMPONENTS, IMAGED, RenderConfig
from aistack.crd import all_crds, crd_files
from aistack.errors import format_validation_error
from aistack.hub import HfHub
from aistack.limits import DEFAULT_BURST, DEFAULT_QPS, DEFAULT_RESYNC, DEFAULT_WORKERS
from aistack.render import render, render_yaml
from aistack.settings import OperatorSettings
from aistack.yamlio import dump_all

if TYPE_CHECKING:
    from aistack.verdicts import LicenseVerdict

EXIT_USAGE = 2
#: Input larger than this is refused unread (the API server takes at most 3 MiB per request).
MAX_INPUT_BYTES = 4 * 2**20
#: Nodes a document may hold once its aliases are expanded: far more than any manifest,
#: far fewer than a "billion laughs" document, which a few dozen aliases blow up.
MAX_NODES = 1_000_000


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses documents whose aliases expand beyond ``MAX_NODES``."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_NODES:
            raise yaml.YAMLError(
                f"expands into more than {MAX_NODES:,} nodes through its aliases (*name); refused"
            )
        return node


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Nodes under ``node`` with every alias expanded (shared nodes are counted once each
    time they are referenced, computed once)."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:
            raise yaml.YAMLError("a recursive alias (a node that contains itself); refused")
        return memo[key]
    memo[key] = -1
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[key] = min(total, MAX_NODES + 1)
    return memo[key]


class InputError(Exception):
    """Bad input: the message is for the user, as it is."""


@dataclass(frozen=True)
class Document:
    source: str
    index: int
    body: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source} (document {self.index + 1})"


def _read(path: str, stdin: TextIO) -> Iterator[Document]:
    try:
        if path == "-":
            text = stdin.read(MAX_INPUT_BYTES + 1)
        else:
            with Path(path).open(encoding="utf-8") as f:
                text = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if len(text) > MAX_INPUT_BYTES:
        raise InputError(f"{path}: larger than {MAX_INPUT_BYTES // 2**20} MiB; refused unread")
    try:
        bodies = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError as exc:
        raise InputError(f"{path}: nested too deeply to be a manifest; refused") from exc
    for i, body in enumerate(bodies):
        if body is None:
            continue
        if not isinstance(body, dict):
            raise InputError(
                f"{path} (document {i + 1}): expected a mapping, got {type(body).__name__}"
            )
        yield Document(path, i, body)


def _stack_of(doc: Any, notes: list[str], problems: list[str]) -> AIStack | None:
    """The AIStack a document is, or None: another kind is noted (a GitOps directory
    holds more than stacks) or refused, and a stack that does not validate is refused."""
    api_version = doc.body.get("apiVersion")
    kind = doc.body.get("kind")
    if not isinstance(api_version, str) or not api_version.startswith(f"{GROUP}/"):
        notes.append(f"{doc.where}: skipped {kind or 'object'} ({api_version or 'no apiVersion'})")
        return None
    if api_version != API_VERSION:
        problems.append(
            f"{doc.where}: apiVersion: {api_version!r} is not served; use {API_VERSION}"
        )
        return None
    if kind == "LicensePolicy":
        notes.append(f"{doc.where}: skipped LicensePolicy (policies are not rendered)")
        return None
    if kind != "AIStack":
        problems.append(f"{doc.where}: kind: {kind!r} is not a kind of {GROUP}; expected AIStack")
        return None
    try:
        return AIStack.model_validate(doc.body)
    except ValidationError as err:
        problems += format_validation_error(doc.where, err)
        return None


def load_stacks(paths: Sequence[str], stdin: TextIO = sys.stdin) -> tuple[list[AIStack], list[str]]:
    """Parse and validate every AIStack in the files.

    Returns the stacks and notes about documents that were skipped (other kinds that may
    sit beside a stack in a GitOps directory). Raises InputError listing every problem.
    """
    stacks: list[AIStack] = []
    notes: list[str] = []
    problems: list[str] = []
    for path in paths:
        try:
            docs = list(_read(path, stdin))
        except InputError as exc:
            problems.append(str(exc))
            continue
        # Documents that claim to be a stack of the served version, valid or not.
        found = [
            d for d in docs
            if d.body.get("apiVersion") == API_VERSION and d.body.get("kind") == "AIStack"
        ]  # fmt: skip
        for doc in docs:
            if (stack := _stack_of(doc, notes, problems)) is not None:
                stacks.append(stack)
        if not found and not any(p.startswith(path) for p in problems):
            problems.append(
                f"{path}: no AIStack found (expected apiVersion: {API_VERSION}, kind: AIStack)"
            )
    if problems:
        raise InputError("\n".join(problems))
    return stacks, notes


def _cmd_render(args: argparse.Namespace) -> int:
    stacks, notes = load_stacks(args.filename)
    for note in notes:
        print(note, file=sys.stderr)
    config = RenderConfig(
        monitoring_crds=args.monitoring_crds, prometheus_address=args.prometheus_address
    )
    manifests: list[dict[str, Any]] = []
    for stack in stacks:
        if args.namespace and not stack.metadata.namespace:
            stack = stack.model_copy(
                update={"metadata": stack.metadata.model_copy(update={"namespace": args.namespace})}
            )
        licensed = [n for m in stack.spec.models for n in [m.name, *(a.name for a in m.adapters)]]
        licensed += [p.name for p in stack.spec.gateway.providers]
        unknown = set(args.deny) - set(licensed)
        if unknown and len(stacks) == 1:
            raise InputError(
                f"--deny: no model, adapter or provider named {', '.join(sorted(unknown))} in "
                f"{stack.metadata.name}"
            )
        permitted = {name: name not in args.deny for name in licensed}
        # A draft model follows its model here (the operator judges it on its own).
        permitted |= {
            names.speculative_key(m.name): m.name not in args.deny for m in stack.spec.models
        }
        manifests += render(stack, permitted, config)
    sys.stdout.write(render_yaml(manifests))
    return 0


def _cmd_crds(args: argparse.Namespace) -> int:
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in crd_files().items():
            (out / name).write_text(text)
            print(f"wrote {out / name}", file=sys.stderr)
        return 0
    sys.stdout.write(dump_all(all_crds().values()))
    return 0


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is no port (0 to 65535)")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not zero or more")
    return value


def _prometheus_address(text: str) -> str:
    import re

    from aistack.api.v1alpha1 import URL_PATTERN

    if not re.match(URL_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http(s) URL of a Prometheus (e.g. http://prometheus:9090)"
        )
    return text


def _hub() -> HfHub:
    """The Hugging Face Hub, with ``HF_TOKEN`` (for gated models) when it is set."""
    import os

    return HfHub(token=os.environ.get("HF_TOKEN") or None)


def _run_settings(args: argparse.Namespace) -> OperatorSettings:
    defaults = RenderConfig()
    config = RenderConfig(
        images={c.image: getattr(args, f"{c.image}_image") for c in IMAGED},
        cluster_domain=args.cluster_domain or defaults.cluster_domain,
        stack_monitoring=args.stack_monitoring,
        manage_leaderworkersets=args.leaderworkersets,
        manage_keda=args.keda,
        prometheus_address=args.prometheus_address,
        # Until API discovery at start, then the watches on the PodMonitor and
        # LeaderWorkerSet CRDs, say otherwise (handlers.Runtime.start, handlers.watch_optional).
        monitoring_crds=False,
        leaderworkersets=False,
        keda=False,
    )
    return OperatorSettings(
        config=config,
        kubeconfig=args.kubeconfig or None,
        workers=args.workers,
        api_qps=args.api_qps,
        api_burst=args.api_burst,
        resync=args.resync_interval,
        hub=_hub() if args.hub else None,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    import kopf

    from aistack import handlers

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    handlers.use_settings(_run_settings(args))
    if args.stack_monitoring:
        handlers.watch_optional("PodMonitor")
    if args.leaderworkersets:
        handlers.watch_optional("LeaderWorkerSet")
    if args.keda:
        handlers.watch_optional("ScaledObject")
    if args.metrics_port:
        from aistack import metrics

        try:
            metrics.serve(args.metrics_port)
        except OSError as exc:
            raise InputError(
                f"--metrics-port {args.metrics_port}: cannot listen ({exc.strerror}); give "
                "another port, or 0 to serve no metrics"
            ) from exc
    if args.webhook_port:
        handlers.enable_admission(
            port=args.webhook_port,
            addr=args.webhook_addr,
            host=args.webhook_host,
            certfile=args.webhook_cert,
            keyfile=args.webhook_key,
            managed=args.webhook_managed,
        )
    kopf.configure(
        verbose=args.verbose,
        debug=args.debug,
        log_format=kopf.LogFormat[args.log_format.upper()],
    )
    if not (args.verbose or args.debug):
        # kopf reports every handler call on every watch event at INFO: our reconciler
        # logs what it does itself, so keep kopf's per-object chatter for -v.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority,
        liveness_endpoint=args.liveness,
    )
    return 0


def _load_policies(paths: Sequence[str]) -> list[dict[str, Any]]:
    from aistack.api.v1alpha1 import LicensePolicy
    from aistack.licenses import compile_policy

    policies: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in paths:
        try:
            docs = list(_read(path, sys.stdin))
        except InputError as exc:
            problems.append(str(exc))
            continue
        for doc in docs:
            if doc.body.get("kind") != "LicensePolicy":
                continue
            try:
                policy = LicensePolicy.model_validate(doc.body)
            except ValidationError as err:
                problems += format_validation_error(doc.where, err)
                continue
            problems += [f"{doc.where}: {p}" for p in compile_policy(policy)[1]]
            policies.append(doc.body)
        if not any(d.body.get("kind") == "LicensePolicy" for d in docs) and not problems:
            problems.append(f"{path}: no LicensePolicy found")
    if problems:
        raise InputError("\n".join(problems))
    return policies


def _stacks_to_check(args: argparse.Namespace) -> list[AIStack | None]:
    """Every stack in -f FILE, or [None] for MODEL alone."""
    if args.filename:
        if args.model:
            raise InputError("give either MODEL or -f FILE, not both")
        stacks, _ = load_stacks(args.filename)
        return list(stacks)
    if args.model:
        return [None]
    raise InputError("give a MODEL (a Hugging Face repo id, pvc:// or s3:// source) or -f FILE")


def _model_of(args: argparse.Namespace) -> ModelSpec:
    """MODEL with its --license and --revision, as a stack would list it."""
    fields: dict[str, Any] = {"name": "model", "source": args.model}
    if args.license:
        fields["license"] = args.license
    if args.revision:
        fields["revision"] = args.revision
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as err:
        raise InputError("\n".join(format_validation_error("MODEL", err))) from err


#: How each license source was verified, as ``license check`` prints it.
VERIFIED = {"Catalog": "verified", "Hub": "verified", "Declared": "not verified"}


def _row(stack: str, v: LicenseVerdict, source: str | None, revision: str | None,
         **what: str | None) -> dict[str, Any]:  # fmt: skip
    """One verdict as ``license check`` reports it; ``what``: model, adapter, draft,
    provider or image (the part), each None unless the row is about it."""
    return {
        "stack": stack or None, "model": None, "adapter": None, "draft": None,
        "provider": None, "image": None, **what, "source": source, "revision": revision,
        "license": v.license, "licenseSource": v.license_source,
        "verified": VERIFIED.get(v.license_source or ""), "permitted": v.permitted,
        "violation": v.violation, "reason": v.reason, "message": v.message,
    }  # fmt: skip


def _stack_rows(stack: AIStack, verdicts: Mapping[str, LicenseVerdict]) -> list[dict[str, Any]]:
    name = stack.metadata.name
    rows = []
    for m in stack.spec.models:
        rows.append(_row(name, verdicts[m.name], m.source, m.revision, model=m.name))
        rows += [
            _row(name, verdicts[a.name], a.source, a.revision, model=m.name, adapter=a.name)
            for a in m.adapters
        ]
        draft = m.speculative
        if draft is not None and (v := verdicts.get(names.speculative_key(m.name))):
            rows.append(_row(name, v, draft.source, draft.revision, model=m.name,
                             draft=draft.source))  # fmt: skip
    for p in stack.spec.gateway.providers if stack.spec.gateway.enabled else []:
        target = f"{p.provider}/{p.model} at {p.host}"
        rows.append(_row(name, verdicts[p.name], target, None, provider=p.name))
    for part in (c.image for c in COMPONENTS if c.named_image is not None):
        if (v := verdicts.get(names.image_key(part))) is not None:
            rows.append(_row(name, v, None, None, image=part))
    return rows


def _who(row: Mapping[str, Any]) -> str:
    if not row["stack"]:
        return ""
    if row["provider"]:
        return f"{row['stack']}/{row['provider']} (provider {row['source']}): "
    if row["image"]:
        return f"{row['stack']}/{row['image']} (image): "
    who = f"{row['stack']}/{row['model']}"
    if row["adapter"]:
        return f"{who}/{row['adapter']} (adapter): "
    if row["draft"]:
        return f"{who} (draft model {row['draft']}): "
    return f"{who}: "


def _print_license_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        verdict = "PERMITTED" if row["permitted"] else "DENIED"
        if row["permitted"] and row["violation"]:
            verdict = "PERMITTED (policy violated, not enforced)"
        verified = f" ({row['verified']})" if row["verified"] else ""
        print(f"{_who(row)}{verdict}  license={row['license'] or 'unknown'}  "
              f"source={row['licenseSource'] or '-'}{verified}  "
              f"reason={row['reason']}")  # fmt: skip
        print(f"  {row['message']}")


def _cmd_license_check(args: argparse.Namespace) -> int:
    import json

    from aistack.licenses import decide_models, decide_routes, policies_from

    policies = policies_from(_load_policies(args.policy))
    hub = _hub() if args.hub else None
    defaults = tuple(RenderConfig().images.values())
    rows: list[dict[str, Any]] = []
    for stack in _stacks_to_check(args):
        if stack is None:
            model = _model_of(args)
            verdict = decide_models([model], policies, hub=hub, default_images=defaults)
            rows.append(_row("", verdict[model.name], model.source, model.revision))
            continue
        # Secrets are checked by the operator (this command has no cluster to ask).
        verdicts = decide_routes(stack, policies, hub=hub, default_images=defaults)
        rows += _stack_rows(stack, verdicts)
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        _print_license_rows(rows)
    return 0 if all(r["permitted"] for r in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aistack",
        description="aistack-operator: one AIStack resource, one license-checked open AI stack.",
    )
    parser.add_argument("--version", action="version", version=f"aistack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_render = sub.add_parser(
        "render",
        help="print the manifests the operator would apply for AIStack files",
        description=(
            "Print the Kubernetes manifests for every AIStack in the files, as multi-document "
            "YAML (like `helm template`), for review and GitOps diffs. Models are rendered as "
            "permitted; use --deny NAME to see a stack with a model, adapter or hosted provider "
            "blocked by the license policy."
        ),
    )
    p_render.add_argument(
        "-f", "--filename", action="append", required=True, metavar="FILE",
        help="AIStack manifest ('-' for standard input); repeatable",
    )  # fmt: skip
    p_render.add_argument(
        "-n",
        "--namespace",
        default="",
        help="namespace for stacks that name none (default: default)",
    )
    p_render.add_argument(
        "--deny", action="append", default=[], metavar="MODEL",
        help="render as if MODEL (a model, adapter or provider route name) were not permitted "
        "by the license policy; repeatable",
    )  # fmt: skip
    p_render.add_argument(
        "--monitoring-crds", action=argparse.BooleanOptionalAction, default=None,
        help="render as if the cluster had (or, with --no-monitoring-crds, lacked) the "
        "Prometheus Operator's CRDs: with them, stacks that leave spec.monitoring.enabled "
        "unset get PodMonitors (default: only stacks with enabled: true get them)",
    )  # fmt: skip
    p_render.add_argument(
        "--prometheus-address", metavar="URL", type=_prometheus_address,
        help="the Prometheus autoscaled models' ScaledObjects query, for stacks that name "
        "none (spec.monitoring.prometheusAddress), as the operator's --prometheus-address",
    )  # fmt: skip
    p_render.set_defaults(func=_cmd_render)

    p_run = sub.add_parser(
        "run",
        help="run the operator",
        description=(
            "Run the operator against the cluster of the current kubeconfig (or in-cluster "
            "credentials). Watches every namespace unless -n limits it."
        ),
    )
    p_run.add_argument(
        "-n", "--namespace", action="append", default=[], metavar="NS",
        help="serve only this namespace (repeatable; globs like team-* work)",
    )  # fmt: skip
    p_run.add_argument(
        "--peering", metavar="NAME", default=None,
        help="coordinate with other replicas through this KopfPeering/ClusterKopfPeering "
        "(needs the kopf.dev CRDs); without it the operator runs standalone",
    )  # fmt: skip
    p_run.add_argument("--priority", type=int, default=0, help="peering priority of this replica")
    p_run.add_argument(
        "--workers", type=_positive_int, default=DEFAULT_WORKERS, metavar="N",
        help=f"stacks reconciled at the same time (default: {DEFAULT_WORKERS})",
    )  # fmt: skip
    p_run.add_argument(
        "--api-qps", type=float, default=DEFAULT_QPS, metavar="QPS",
        help=f"average API requests per second, at most (default: {DEFAULT_QPS:g}; 0: no limit)",
    )  # fmt: skip
    p_run.add_argument(
        "--api-burst", type=_positive_int, default=DEFAULT_BURST, metavar="N",
        help=f"API requests at once above --api-qps (default: {DEFAULT_BURST})",
    )  # fmt: skip
    p_run.add_argument(
        "--resync-interval", type=_non_negative_float, default=DEFAULT_RESYNC, metavar="SECONDS",
        help="reconcile every stack again this often (jittered by 10%%) even when nothing "
        f"changed, as a safety net; a converged stack costs no API call "
        f"(default: {DEFAULT_RESYNC:g}; 0: never)",
    )  # fmt: skip
    p_run.add_argument(
        "--liveness", metavar="URL", help="serve liveness at URL, e.g. http://0.0.0.0:8080/healthz"
    )
    p_run.add_argument(
        "--metrics-port", type=_port, default=9090, metavar="PORT",
        help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics (default: 9090; 0: off)",
    )  # fmt: skip
    p_run.add_argument("--log-format", choices=["full", "plain", "json"], default="full")
    p_run.add_argument("-v", "--verbose", action="store_true", help="more logs")
    p_run.add_argument("--debug", action="store_true", help="even more logs")
    p_run.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig to use")
    for component in IMAGED:  # one default image per part of the stack, and per engine
        p_run.add_argument(
            f"--{component.image}-image",
            metavar="IMAGE",
            help=f"default image of {component.title} for stacks that name none "
            f"(default: {component.default_image})",
        )
    p_run.add_argument("--cluster-domain", help="cluster DNS domain (default: cluster.local)")
    p_run.add_argument(
        "--stack-monitoring", action=argparse.BooleanOptionalAction, default=True,
        help="render stacks' PodMonitors when the cluster has the Prometheus Operator's CRDs "
        "(default); --no-stack-monitoring where the operator may not write PodMonitors",
    )  # fmt: skip
    p_run.add_argument(
        "--leaderworkersets", action=argparse.BooleanOptionalAction, default=True,
        help="serve models with nodes > 1 as LeaderWorkerSets when the cluster has the "
        "LeaderWorkerSet API (default); --no-leaderworkersets where the operator may not "
        "write them (such models then report what is missing)",
    )  # fmt: skip
    p_run.add_argument(
        "--keda", action=argparse.BooleanOptionalAction, default=True,
        help="scale autoscaled models with KEDA ScaledObjects when the cluster has KEDA "
        "(default); --no-keda where the operator may not write them (such models then run "
        "at their replicas, and the Autoscaling condition says why)",
    )  # fmt: skip
    p_run.add_argument(
        "--prometheus-address", metavar="URL", type=_prometheus_address,
        help="the Prometheus that scrapes the stacks' PodMonitors, which autoscaled models' "
        "ScaledObjects query, for stacks that name none (spec.monitoring.prometheusAddress)",
    )  # fmt: skip
    p_run.add_argument(
        "--hub", action="store_true",
        help="look up licenses of models the catalog does not know on the Hugging Face Hub "
        "(model card at the pinned revision; 3 s timeout; answers cached 10 min; HF_TOKEN "
        "for gated models). Without it, such models need spec.models[].license",
    )  # fmt: skip
    hook = p_run.add_argument_group(
        "license webhook",
        "A validating admission webhook that refuses stacks with models the LicensePolicy "
        "denies (path /license). Off unless --webhook-port is given.",
    )
    hook.add_argument("--webhook-port", type=int, metavar="PORT", help="serve the webhook on PORT")
    hook.add_argument("--webhook-addr", default="0.0.0.0", metavar="ADDR", help="listen address")
    hook.add_argument(
        "--webhook-cert", metavar="FILE", help="TLS certificate (default: self-signed, generated)"
    )
    hook.add_argument("--webhook-key", metavar="FILE", help="TLS private key for --webhook-cert")
    hook.add_argument(
        "--webhook-managed", metavar="NAME",
        help="create and maintain the ValidatingWebhookConfiguration NAME, pointing at "
        "https://HOST:PORT/license (for control planes on the host; in a cluster the Helm "
        "chart provides it)",
    )  # fmt: skip
    hook.add_argument(
        "--webhook-host", metavar="HOST", help="host the API server reaches the webhook at"
    )
    p_run.set_defaults(func=_cmd_run)

    p_lic = sub.add_parser("license", help="check model licenses against a policy")
    lic_sub = p_lic.add_subparsers(dest="license_command", required=True)
    p_check = lic_sub.add_parser(
        "check",
        help="decide whether models may be served",
        description=(
            "Resolve each model's license (shipped catalog, then the Hub with --hub, then the "
            "declared license) and "
            "evaluate it against the policies given (default: the built-in default policy). "
            "Works offline. Exit status: 0 all permitted, 1 any denied, 2 bad input."
        ),
    )
    p_check.add_argument("model", nargs="?", metavar="MODEL", help="e.g. mistralai/Mistral-7B-v0.3")
    p_check.add_argument("--license", metavar="EXPR", help="declared SPDX expression")
    p_check.add_argument("--revision", metavar="REV", help="pinned revision")
    p_check.add_argument(
        "-f", "--filename", action="append", default=[], metavar="FILE",
        help="check every model of the AIStacks in FILE (repeatable)",
    )  # fmt: skip
    p_check.add_argument(
        "--policy", action="append", default=[], metavar="FILE",
        help="LicensePolicy manifest(s); several all apply (repeatable)",
    )  # fmt: skip
    p_check.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p_check.add_argument(
        "--hub", action="store_true",
        help="also ask the Hugging Face Hub (HF_TOKEN for gated models)",
    )  # fmt: skip
    p_check.set_defaults(func=_cmd_license_check)

    p_crds = sub.add_parser("crds", help="print the CustomResourceDefinitions")
    p_crds.add_argument("--output-dir", metavar="DIR", help="write one file per CRD into DIR")
    p_crds.set_defaults(func=_cmd_crds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except InputError as exc:
        print(f"error: {exc}" if "\n" not in str(exc) else f"error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
