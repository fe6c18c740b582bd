"""A small OpenAI-compatible server that takes a vLLM model server's place where a GPU
would be needed (the conformance suite has none).

It is started with the *rendered* ``vllm serve`` arguments, after vLLM's own parser and
config validation accepted them (``vllm_check.py``), and reads from them only what a client
can observe: the served model name, the host, the port and the LoRA adapters
(``--lora-modules``, read as vLLM's parser reads them: ``name=path`` or JSON). It answers
``/health``, ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` the way
vLLM's OpenAI server does (same paths, same response shapes): ``/v1/models`` lists the
served model (``root``: the model path) and then each adapter with ``root`` = its path and
``parent`` = the served model's name; a request whose ``model`` is the served name or an
adapter's is answered, with a reply that names that model, so that a test can tell which
server, and which adapter, a request reached; any other name gets vLLM's 404.
``/standin/requests`` returns the requests it saw; ``POST /standin/fail {"status": N}``
makes it answer every completion with status N (each still recorded), ``{"status": null}``
serve again.

``STANDIN_BIND`` overrides the rendered ``--host`` (several stand-ins share port 8000 on
loopback, each on its Service's own address). ``STANDIN_HOOK=module:function`` names a
function called once with the parsed arguments that returns a per-request callback
(``callback(path, request_json, response_json)``), e.g. to emit a trace span through
vLLM's own tracer setup.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Callback = Callable[[str, dict[str, Any], dict[str, Any]], None]


def _lora_module(item: str) -> dict[str, Any]:
    """One ``--lora-modules`` entry as vLLM's ``LoRAParserAction`` reads it: ``name=path``,
    or a JSON object with ``name``, ``path`` and optionally ``base_model_name``."""
    if "=" in item and "," not in item:
        name, path = item.split("=", 1)
        return {"name": name, "path": path, "base_model_name": None}
    data = json.loads(item)
    return {
        "name": data["name"],
        "path": data["path"],
        "base_model_name": data.get("base_model_name"),
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("model")
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--lora-modules", nargs="+", type=_lora_module, default=[])
    args, _rest = parser.parse_known_args(argv)
    if not args.served_model_name:
        args.served_model_name = [args.model]
    if args.lora_modules and not args.enable_lora:
        # vLLM could not load them either: without --enable-lora it has no LoRA manager.
        parser.error("--lora-modules without --enable-lora")
    return args


def model_cards(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``/v1/models`` as vLLM's ``OpenAIServingModels.show_available_models`` builds it: the
    served names (``root``: the model), then each adapter (``parent``: its
    ``base_model_name`` if it names a served model, else the first served name)."""
    names: list[str] = args.served_model_name

    def card(name: str, root: str, parent: str | None) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
        }

    cards = [card(n, args.model, None) for n in names]
    for lora in args.lora_modules:
        base = lora["base_model_name"]
        cards.append(card(lora["name"], lora["path"], base if base in names else names[0]))
    return cards


def main(argv: list[str]) -> None:
    if argv and argv[0] == "serve":
        argv = argv[1:]
    args = parse(argv)
    cards = model_cards(args)
    names: list[str] = [card["id"] for card in cards]
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()
    # POST /standin/fail {"status": N}: answer every completion request with status N (and
    # still record it), as a failing server would; {"status": null}: serve again.
    failing: dict[str, int | None] = {"status": None}
    callback: Callback | None = None
    hook = os.environ.get("STANDIN_HOOK")
    if hook:
        module, _, func = hook.partition(":")
        callback = getattr(importlib.import_module(module), func)(args)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *a: Any) -> None:
            sys.stderr.write("standin: " + fmt % a + "\n")

        def _send(self, code: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": cards})
            elif self.path == "/standin/requests":
                with lock:
                    self._send(200, list(seen))
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": {"message": "body is not JSON"}})
                return
            if self.path == "/standin/fail":
                with lock:
                    failing["status"] = request.get("status")
                self._send(200, failing)
                return
            model = request.get("model")
            if model not in names:
                # vLLM answers an unknown model name with 404.
                self._send(404, {"error": {"message": f"The model `{model}` does not exist."}})
                return
            with lock:
                seen.append(
                    {"path": self.path, "model": model, "headers": dict(self.headers.items()),
                     "time": time.time()}
                )  # fmt: skip
                status = failing["status"]
            if status is not None:
                self._send(status, {"error": {"message": f"stand-in failing with {status}"}})
                return
            if self.path == "/v1/chat/completions":
                text = f"stand-in for {model}"
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                kind = "chat.completion"
            elif self.path == "/v1/completions":
                text = f"stand-in for {model}"
                choice = {"index": 0, "text": text, "finish_reason": "stop"}
                kind = "text_completion"
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            response = {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": kind,
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
            }
            if callback is not None:
                callback(self.path, request, response)
            self._send(200, response)

    host = os.environ.get("STANDIN_BIND", args.host)
    server = ThreadingHTTPServer((host, args.port), Handler)
    sys.stderr.write(f"standin: serving {names} on {host}:{args.port}\n")
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
