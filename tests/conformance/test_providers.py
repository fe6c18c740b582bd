"""Hosted providers behind the rendered LiteLLM gateway, run for real (see
fixtures_providers.py): routes to an OpenAI-compatible API and to Anthropic's Messages API,
keys from the Secret only, the gateway's own key, fallbacks, limits and the route list.

Each class starts one gateway (they listen on the rendered port 4000) with loopback
stand-ins of the providers' APIs (provider_standins.py); no real provider is contacted.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
import yaml
from fixtures_gateway import gateway_config
from fixtures_providers import (
    ENDPOINT_VARIABLES,
    GATEWAY_KEY_SECRET,
    HybridGateway,
    gateway_config_text,
    gateway_secret_env,
    provider_routes,
    start_hybrid_gateway,
)
from harness import HostMap
from provider_standins import ANTHROPIC, OPENAI, reply

SELF_HOSTED = "qwen-7b"
COMPAT = "compat-llama"
COMPAT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CLAUDE = "claude"
CLAUDE_MODEL = "claude-sonnet-4-5"
SECRET = "llm-keys"
#: route -> (the Secret's key, the env var the render names for it)
SECRET_KEYS = {
    COMPAT: ("compat", "AISTACK_PROVIDER_COMPAT_LLAMA_KEY"),
    CLAUDE: ("anthropic", "AISTACK_PROVIDER_CLAUDE_KEY"),
}

#: the Secret's values for the first gateway, and other values for the second
KEYS = {COMPAT: "sk-conformance-compat-3f1c", CLAUDE: "sk-ant-conformance-9d2e"}
ROTATED = {COMPAT: "sk-conformance-compat-rotated-77aa", CLAUDE: "sk-ant-conformance-rotated-5b0c"}
#: the gateway's own key (authSecretRef), for the first gateway and the second
GATEWAY_KEY = "sk-conformance-gateway-41d7"
ROTATED_GATEWAY_KEY = "sk-conformance-gateway-rotated-c2e9"

#: what the vLLM stand-in (standin.py) answers
SELF_HOSTED_REPLY = f"stand-in for {SELF_HOSTED}"


def providers() -> list[dict[str, Any]]:
    """The stack's provider routes (``apiBase`` is added by start_hybrid_gateway)."""
    return [
        {
            "name": route,
            "provider": provider,
            "model": model,
            "credentialsSecretRef": {"name": SECRET, "key": SECRET_KEYS[route][0]},
            "standin": kind,
        }
        for route, provider, model, kind in (
            (COMPAT, "openai-compatible", COMPAT_MODEL, OPENAI),
            (CLAUDE, "anthropic", CLAUDE_MODEL, ANTHROPIC),
        )
    ]


def post_with_headers(
    hybrid: HybridGateway, path: str, body: Any
) -> tuple[int, dict[str, str], Any]:
    """POST to the gateway: the status, the response headers (lower-case) and the JSON."""
    request = urllib.request.Request(
        hybrid.gateway.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **hybrid.gateway.headers()},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return (
                resp.status,
                {k.lower(): v for k, v in resp.headers.items()},
                json.loads(resp.read()),
            )
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def chat(model: str, content: str = "hello") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def content(body: Any) -> Any:
    return body["choices"][0]["message"]["content"] if isinstance(body, dict) else body


# --------------------------------------------------------------------------- routing


@pytest.fixture(scope="class")
def hybrid(hosts: HostMap, suite_dir: Path, log_dir: Path) -> Iterator[HybridGateway]:
    """qwen-7b of our own, an openai-compatible route and an anthropic route; qwen-7b
    falls back to claude, then to compat-llama. No limits."""
    gateway = start_hybrid_gateway(
        "hosted",
        model=SELF_HOSTED,
        providers=providers(),
        keys=KEYS,
        gateway_key=GATEWAY_KEY,
        fallbacks=[{"model": SELF_HOSTED, "to": [CLAUDE, COMPAT]}],
        hosts=hosts,
        workdir=suite_dir / "gateway-providers",
        log_dir=log_dir,
    )
    try:
        yield gateway
    finally:
        gateway.stop()


class TestHostedProviders:
    def test_lists_exactly_the_rendered_routes(self, hybrid: HybridGateway) -> None:
        rendered = sorted(provider_routes(hybrid.manifests))
        assert rendered == sorted([SELF_HOSTED, COMPAT, CLAUDE])
        code, body = hybrid.gateway.get("/v1/models")
        assert code == 200, body
        # The route names, not the providers' model ids.
        assert sorted(m["id"] for m in body["data"]) == rendered

    def test_openai_compatible_route_reaches_its_api_with_the_secrets_key(
        self, hybrid: HybridGateway
    ) -> None:
        params = provider_routes(hybrid.manifests)[COMPAT]
        stand_in = hybrid.providers[COMPAT]
        assert params["model"] == f"openai/{COMPAT_MODEL}"
        assert params["api_base"] == f"{stand_in.url}/v1"
        before = len(stand_in.posts())
        code, body = hybrid.gateway.post("/v1/chat/completions", chat(COMPAT))
        assert code == 200, body
        assert content(body) == reply(OPENAI, COMPAT_MODEL)
        assert body["model"] == COMPAT  # the route asked for
        seen = stand_in.posts()[before:]
        # The provider's model id as rendered (without LiteLLM's `openai/` prefix).
        assert [(r["path"], r["body"]["model"]) for r in seen] == [
            ("/v1/chat/completions", COMPAT_MODEL)
        ]
        assert seen[0]["headers"]["authorization"] == f"Bearer {KEYS[COMPAT]}"
        assert seen[0]["body"]["messages"] == chat(COMPAT)["messages"]
        assert hybrid.providers[CLAUDE].posts() == []

    def test_anthropic_route_speaks_the_messages_api_and_answers_in_openai_format(
        self, hybrid: HybridGateway
    ) -> None:
        params = provider_routes(hybrid.manifests)[CLAUDE]
        stand_in = hybrid.providers[CLAUDE]
        assert params["model"] == f"anthropic/{CLAUDE_MODEL}"
        # Rendered for Anthropic's own endpoint: no api_base, and no variable that moves it.
        assert "api_base" not in params
        rendered_env = {
            var["name"]
            for var in harness.container(
                hybrid.manifests, hybrid.gateway.deployment, "gateway"
            ).get("env", [])
        }
        assert not rendered_env & {"ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"}, rendered_env
        # Test-side, LiteLLM's own variable for Anthropic's endpoint names the stand-in's
        # host; LiteLLM appends /v1/messages (its default is
        # https://api.anthropic.com/v1/messages).
        assert hybrid.endpoint_env == {ENDPOINT_VARIABLES["anthropic"]: stand_in.url}
        before = len(stand_in.posts())
        compat_before = len(hybrid.providers[COMPAT].posts())
        code, body = hybrid.gateway.post("/v1/chat/completions", chat(CLAUDE, "bonjour"))
        assert code == 200, body
        # Anthropic's message, translated into a chat completion under the route's name.
        assert body["object"] == "chat.completion", body
        assert body["model"] == CLAUDE
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert content(body) == reply(ANTHROPIC, CLAUDE_MODEL)
        assert body["choices"][0]["finish_reason"] == "stop"  # Anthropic's end_turn
        usage = body["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (5, 7)  # input/output
        seen = stand_in.posts()[before:]
        assert [(r["path"], r["body"]["model"]) for r in seen] == [("/v1/messages", CLAUDE_MODEL)]
        request = seen[0]
        assert request["headers"]["x-api-key"] == KEYS[CLAUDE]
        assert "authorization" not in request["headers"]
        assert request["headers"]["anthropic-version"]
        assert isinstance(request["body"]["max_tokens"], int)
        (message,) = request["body"]["messages"]
        assert message["role"] == "user"
        assert "bonjour" in str(message["content"])
        assert len(hybrid.providers[COMPAT].posts()) == compat_before

    def test_keys_come_from_the_secret_through_the_environment_only(
        self, hybrid: HybridGateway
    ) -> None:
        # Not in the ConfigMap, nor anywhere in the render: only the variable's name.
        rendered = yaml.safe_dump_all(hybrid.manifests)
        text = gateway_config_text(hybrid.manifests)
        assert not [key for key in [*KEYS.values(), GATEWAY_KEY] if key in rendered]
        routes = provider_routes(hybrid.manifests)
        env = gateway_secret_env(hybrid.manifests)
        for route, (secret_key, var) in SECRET_KEYS.items():
            assert routes[route]["api_key"] == f"os.environ/{var}"
            assert f"os.environ/{var}" in text
            assert env[var] == (SECRET, secret_key)
        # The gateway's own key, from its Secret, is LiteLLM's master key.
        assert gateway_config(hybrid.manifests)["general_settings"] == {
            "master_key": "os.environ/LITELLM_MASTER_KEY"
        }
        assert env["LITELLM_MASTER_KEY"] == GATEWAY_KEY_SECRET
        # Each route sent its own Secret key's value on every request (LiteLLM's own
        # GET /v1/models to the OpenAI-compatible API included)...
        compat, claude = hybrid.providers[COMPAT], hybrid.providers[CLAUDE]
        for route in SECRET_KEYS:
            code, body = hybrid.gateway.post("/v1/chat/completions", chat(route))
            assert code == 200, body
        assert {r["headers"].get("authorization") for r in compat.requests()} == {
            f"Bearer {KEYS[COMPAT]}"
        }
        assert {r["headers"].get("x-api-key") for r in claude.requests()} == {KEYS[CLAUDE]}
        # ...and the stand-ins refuse any other key, as the providers do.
        for url, headers in (
            (f"{compat.url}/v1/chat/completions", {"Authorization": f"Bearer {KEYS[CLAUDE]}"}),
            (f"{claude.url}/v1/messages", {"x-api-key": KEYS[COMPAT], "anthropic-version": "1"}),
        ):
            code, out = harness.http(url, method="POST", body=chat("x"), headers=headers)
            assert code == 401, out

    @pytest.mark.parametrize("key", ["", "sk-wrong", KEYS[COMPAT]])
    def test_without_the_gateways_key_no_request_reaches_a_provider(
        self, hybrid: HybridGateway, key: str
    ) -> None:
        """Why a gateway with providers needs its own key: without it, whoever reaches the
        gateway would spend the providers' keys. A provider's key is not the gateway's."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        before = {route: len(s.posts()) for route, s in hybrid.providers.items()}
        model_server = hybrid.gateway.stand_ins[SELF_HOSTED]
        served = len(model_server.requests())
        for method, path, body in (
            ("GET", "/v1/models", None),
            *(("POST", "/v1/chat/completions", chat(route)) for route in (COMPAT, CLAUDE)),
        ):
            code, out = harness.http(
                hybrid.gateway.url + path, method=method, body=body, headers=headers
            )
            # A key that is not the master key is looked up in LiteLLM's database; with none
            # configured it is refused with 400 "No connected db".
            assert code in ((400, 401) if key else (401,)), (path, code, out)
        assert {route: len(s.posts()) for route, s in hybrid.providers.items()} == before
        assert len(model_server.requests()) == served

    def test_the_model_of_our_own_is_served_by_its_server(self, hybrid: HybridGateway) -> None:
        model_server = hybrid.gateway.stand_ins[SELF_HOSTED]
        before = {route: len(s.posts()) for route, s in hybrid.providers.items()}
        code, headers, body = post_with_headers(hybrid, "/v1/chat/completions", chat(SELF_HOSTED))
        assert code == 200, body
        assert content(body) == SELF_HOSTED_REPLY
        # A direct answer names the route the client asked for.
        assert body["model"] == SELF_HOSTED
        assert headers.get("x-litellm-attempted-fallbacks", "0") == "0", headers
        assert [r["model"] for r in model_server.requests()][-1:] == [SELF_HOSTED]
        # Healthy: no fallback was taken.
        assert {route: len(s.posts()) for route, s in hybrid.providers.items()} == before

    def test_a_failed_model_server_falls_back_to_the_first_route_listed(
        self, hybrid: HybridGateway
    ) -> None:
        """Last in the class: it stops qwen-7b's model server."""
        fallbacks = gateway_config(hybrid.manifests)["router_settings"]["fallbacks"]
        assert fallbacks == [{SELF_HOSTED: [CLAUDE, COMPAT]}]
        hybrid.gateway.stand_ins[SELF_HOSTED].running.stop()
        before = {route: len(s.posts()) for route, s in hybrid.providers.items()}
        code, headers, body = post_with_headers(hybrid, "/v1/chat/completions", chat(SELF_HOSTED))
        assert code == 200, body
        assert content(body) == reply(ANTHROPIC, CLAUDE_MODEL)
        # LiteLLM names the fallback's model as the provider knows it, not a route name, on
        # purpose (its _override_openai_response_model: "we preserve the actual model that
        # was used"), as OpenAI's API names the model that answered; a header says that a
        # fallback answered (README, Hosted providers: "Which model answered").
        assert body["model"] == CLAUDE_MODEL
        assert headers["x-litellm-attempted-fallbacks"] == "1", headers
        claude = hybrid.providers[CLAUDE].posts()[before[CLAUDE] :]
        assert [(r["path"], r["body"]["model"]) for r in claude] == [("/v1/messages", CLAUDE_MODEL)]
        assert claude[0]["headers"]["x-api-key"] == KEYS[CLAUDE]
        # The first fallback answered: the second was not tried.
        assert len(hybrid.providers[COMPAT].posts()) == before[COMPAT]


# --------------------------------------------------------------------------- limits

#: compat-llama's limit: no fallback; claude's: falls back to qwen-7b
COMPAT_RPM = 3
CLAUDE_RPM = 1
#: how long a client waits for an answer over a limit: one comes at once or not within the
#: minute (see TestProviderLimits)
OVER_LIMIT_TIMEOUT = 5.0


#: LiteLLM 1.110.2 picks a deployment only while its count in the minute + 1 < rpm
#: (`_return_potential_deployments` in router_strategy/lowest_tpm_rpm_v2.py; upstream
#: BerriAI/litellm#33032): a route with rpm N admits N - 1 requests a minute, and 1 if N is
#: 1. The render adds one (render.LITELLM_RPM_OFFSET), so that a route admits what its
#: spec says; these tests hold it to that.
def admitted(rpm: int) -> int:
    return rpm


def in_one_minute(needed: float) -> int:
    """Wait, if needed, until ``needed`` seconds are left in this minute, and return it:
    LiteLLM counts a route's requests per calendar minute (``%H-%M``)."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.2)
    return minute()


def minute() -> int:
    return int(time.time() // 60)


@pytest.fixture(scope="class")
def limited(hosts: HostMap, suite_dir: Path, log_dir: Path) -> Iterator[HybridGateway]:
    """compat-llama limited with no fallback; claude limited with a fallback to qwen-7b.
    The Secret holds other keys than the first gateway's."""
    gateway = start_hybrid_gateway(
        "limited",
        model=SELF_HOSTED,
        providers=providers(),
        keys=ROTATED,
        gateway_key=ROTATED_GATEWAY_KEY,
        fallbacks=[{"model": CLAUDE, "to": [SELF_HOSTED]}],
        limits=[{"route": COMPAT, "rpm": COMPAT_RPM}, {"route": CLAUDE, "rpm": CLAUDE_RPM}],
        hosts=hosts,
        workdir=suite_dir / "gateway-limits",
        log_dir=log_dir,
    )
    try:
        yield gateway
    finally:
        gateway.stop()


def post(gateway: HybridGateway, body: Any, timeout: float) -> tuple[int, Any]:
    """A chat completion with a short wait (``Gateway.post`` waits 60 s)."""
    code, out = harness.http(
        gateway.gateway.url + "/v1/chat/completions",
        method="POST",
        body=body,
        headers=gateway.gateway.headers(),
        timeout=timeout,
    )
    try:
        return code, json.loads(out)
    except ValueError:
        return code, out.decode(errors="replace")


# Over a limit, LiteLLM's usage-based routing raises a RateLimitError with
# `retry-after: 60` (no deployment under its limit: `async_get_available_deployments` in
# router_strategy/lowest_tpm_rpm_v2.py), which the router would retry after that wait (the
# request held until the next minute, then served). The rendered
# `retry_policy: {RateLimitErrorRetries: 0}` makes it answer 429 or take the fallback at
# once; the two tests below hold it to that.


class TestProviderLimits:
    def test_the_limits_are_rendered_for_the_router(self, limited: HybridGateway) -> None:
        config = gateway_config(limited.manifests)
        routes = provider_routes(limited.manifests)
        assert (routes[COMPAT]["rpm"], routes[CLAUDE]["rpm"]) == (COMPAT_RPM + 1, CLAUDE_RPM + 1)
        assert "rpm" not in routes[SELF_HOSTED]
        assert config["router_settings"]["routing_strategy"] == "usage-based-routing-v2"
        assert config["router_settings"]["retry_policy"] == {"RateLimitErrorRetries": 0}
        assert config["router_settings"]["fallbacks"] == [{CLAUDE: [SELF_HOSTED]}]

    def test_no_more_than_the_limit_reaches_the_provider_in_a_minute(
        self, limited: HybridGateway
    ) -> None:
        stand_in = limited.providers[COMPAT]
        before = len(stand_in.posts())
        ok = admitted(COMPAT_RPM)
        start = in_one_minute(needed=OVER_LIMIT_TIMEOUT + 10)
        # One request more than LiteLLM admits (see admitted()).
        answers = [post(limited, chat(COMPAT), OVER_LIMIT_TIMEOUT) for _ in range(ok + 1)]
        seen = stand_in.posts()[before:]
        assert minute() == start, "the requests straddled two minutes"
        assert [code for code, _ in answers[:ok]] == [200] * ok, answers
        assert [content(body) for _, body in answers[:ok]] == [reply(OPENAI, COMPAT_MODEL)] * ok
        assert answers[ok][0] != 200, answers
        assert len(seen) == ok
        # This gateway's Secret values, read from its environment at start.
        assert {r["headers"]["authorization"] for r in seen} == {f"Bearer {ROTATED[COMPAT]}"}

    def test_over_its_limit_a_route_without_fallback_answers_429(
        self, limited: HybridGateway
    ) -> None:
        stand_in = limited.providers[COMPAT]
        start = in_one_minute(needed=OVER_LIMIT_TIMEOUT + 10)
        before = len(stand_in.posts())
        codes = []
        for _ in range(COMPAT_RPM + 1):
            code, body = post(limited, chat(COMPAT), OVER_LIMIT_TIMEOUT)
            codes.append(code)
            if code != 200:
                break
        assert minute() == start, "the requests straddled two minutes"
        assert codes[-1] == 429, (codes, body)
        assert len(stand_in.posts()) - before == len(codes) - 1

    def test_over_its_limit_a_route_takes_its_fallback(self, limited: HybridGateway) -> None:
        claude = limited.providers[CLAUDE]
        model_server = limited.gateway.stand_ins[SELF_HOSTED]
        start = in_one_minute(needed=OVER_LIMIT_TIMEOUT + 10)
        before = len(claude.posts()), len(model_server.requests())
        answers = [
            post(limited, chat(CLAUDE), OVER_LIMIT_TIMEOUT) for _ in range(admitted(CLAUDE_RPM) + 1)
        ]
        assert minute() == start, "the requests straddled two minutes"
        assert [code for code, _ in answers] == [200] * len(answers), answers
        assert [content(body) for _, body in answers] == [
            reply(ANTHROPIC, CLAUDE_MODEL)
        ] * admitted(CLAUDE_RPM) + [SELF_HOSTED_REPLY]
        assert len(claude.posts()) - before[0] == admitted(CLAUDE_RPM)
        assert [r["model"] for r in model_server.requests()[before[1] :]] == [SELF_HOSTED]
