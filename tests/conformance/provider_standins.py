"""Loopback stand-ins for hosted providers' APIs (stdlib only), so that the real gateway can
be pointed at them through a provider route's ``apiBase``: no real provider is contacted.

``python provider_standins.py openai --host H --port P --key K`` answers OpenAI's Chat
Completions API (``POST /v1/chat/completions``), checking ``Authorization: Bearer K`` as
OpenAI does (401 ``invalid_api_key`` otherwise).

``python provider_standins.py anthropic --host H --port P --key K`` answers Anthropic's
Messages API (``POST /v1/messages``): it requires the ``x-api-key`` header to be K
(401 ``authentication_error``), an ``anthropic-version`` header and ``max_tokens`` (400
``invalid_request_error``), as Anthropic's API does, and answers in its shape (``type:
message``, a list of content blocks, ``stop_reason``, ``usage.input_tokens``).

Both accept any model id and answer with a text that names the stand-in and the model, so
that a test can tell which provider, with which model id, answered. ``GET /health``
answers 200 with the stand-in's kind; ``GET /v1/models`` answers an empty list
(with the same key check). ``GET /standin/requests`` returns every other request seen
(method, path, headers and, for a POST, the JSON body), refused ones included.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPENAI = "openai"
ANTHROPIC = "anthropic"
#: what each stand-in answers: ``reply(kind, model)``
REPLY = "{kind} stand-in for {model}"


def reply(kind: str, model: str) -> str:
    return REPLY.format(kind=kind, model=model)


def openai_answer(
    path: str, headers: dict[str, str], request: dict[str, Any], key: str
) -> tuple[int, dict[str, Any]]:
    if path != "/v1/chat/completions":
        return 404, {
            "error": {"message": f"Invalid URL (POST {path})", "type": "invalid_request_error"}
        }
    if headers.get("authorization") != f"Bearer {key}":
        return 401, {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    model = str(request.get("model"))
    return 200, {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply(OPENAI, model)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def _anthropic_error(code: int, kind: str, message: str) -> tuple[int, dict[str, Any]]:
    return code, {"type": "error", "error": {"type": kind, "message": message}}


def anthropic_answer(
    path: str, headers: dict[str, str], request: dict[str, Any], key: str
) -> tuple[int, dict[str, Any]]:
    if path != "/v1/messages":
        return _anthropic_error(404, "not_found_error", f"Not Found: POST {path}")
    if headers.get("x-api-key") != key:
        return _anthropic_error(401, "authentication_error", "invalid x-api-key")
    if not headers.get("anthropic-version"):
        return _anthropic_error(
            400, "invalid_request_error", "anthropic-version: header is required"
        )
    if not isinstance(request.get("max_tokens"), int):
        return _anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
    if not isinstance(request.get("messages"), list) or not request["messages"]:
        return _anthropic_error(400, "invalid_request_error", "messages: Field required")
    model = str(request.get("model"))
    return 200, {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply(ANTHROPIC, model)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }


ANSWER = {OPENAI: openai_answer, ANTHROPIC: anthropic_answer}


def listing(kind: str, path: str, headers: dict[str, str], key: str) -> tuple[int, Any]:
    """``GET /v1/models`` (both APIs have it; the list is empty here), with the same key
    check as a completion; any other GET is 404."""
    if path.split("?", 1)[0] != "/v1/models":
        return 404, {"error": {"message": f"no route {path}"}}
    if kind == OPENAI and headers.get("authorization") != f"Bearer {key}":
        return 401, {"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}}
    if kind == ANTHROPIC and headers.get("x-api-key") != key:
        return _anthropic_error(401, "authentication_error", "invalid x-api-key")
    if kind == OPENAI:
        return 200, {"object": "list", "data": []}
    return 200, {"data": [], "has_more": False, "first_id": None, "last_id": None}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(ANSWER))
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True, help="the API key the provider accepts")
    args = parser.parse_args(argv)
    answer = ANSWER[args.kind]
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *a: Any) -> None:
            sys.stderr.write(f"{args.kind}-standin: " + fmt % a + "\n")

        def _send(self, code: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ok", "standin": args.kind})
            elif self.path == "/standin/requests":
                with lock:
                    self._send(200, list(seen))
            else:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with lock:
                    seen.append({"method": "GET", "path": self.path, "headers": headers})
                self._send(*listing(args.kind, self.path, headers, args.key))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": {"message": "body is not JSON"}})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                seen.append(
                    {"method": "POST", "path": self.path, "headers": headers, "body": request}
                )
            code, payload = answer(self.path, headers, request, args.key)
            self._send(code, payload)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    sys.stderr.write(f"{args.kind}-standin: serving on {args.host}:{args.port}\n")
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
