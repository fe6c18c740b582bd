"""A stand-in for the Hugging Face Hub's model API, on loopback, for the real
``huggingface_hub`` client: it answers, or holds every request (an outage as a client
sees one: a timeout)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPO = "acme/open-7b"  # not in the catalog: only the Hub knows its license
REV = "0123456789abcdef0123456789abcdef01234567"


class FakeHubServer:
    """The Hub's model API; ``hang`` holds each request for ``hang_for`` seconds."""

    def __init__(self) -> None:
        self.hang = False
        self.hang_for = 2.0
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if outer.hang:
                    time.sleep(outer.hang_for)
                body = json.dumps(
                    {"id": REPO, "sha": REV, "cardData": {"license": "apache-2.0"},
                     "tags": ["license:apache-2.0"]}
                ).encode()  # fmt: skip
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
