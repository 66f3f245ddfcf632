"""A small OpenAI-compatible HTTP server around any dataforge backend.

    python -m dataforge.llm.server --model /path/to/model [--backend transformers] [--port 8000]

It serves ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models``, plus
``GET /stats`` (requests answered so far, and by which clients: their ``User-Agent``). It is for
local work and tests of the OpenAI-compatible client; production serving is ``vllm serve``.
Requests are answered one at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dataforge.llm.base import Backend, Request
from dataforge.llm.spec import SamplingParams

# A fault hook (tests use it): (path, body, request number) → None, or (status, raw body) to answer
# instead of the backend; it may sleep to simulate a slow server.
FaultHook = Callable[[str, dict[str, Any], int], tuple[int, bytes] | None]


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: Backend, model_name: str, fault: FaultHook | None = None):
        super().__init__(address, _Handler)
        self.backend, self.model_name, self.fault = backend, model_name, fault
        self.lock = threading.Lock()
        self.count = 0
        self.agents: Counter[str] = Counter()  # requests by the User-Agent that sent them

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(self, status: int, payload: dict[str, Any] | bytes) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        elif self.path == "/stats":
            self._send(200, {"requests": self.server.count, "agents": dict(self.server.agents)})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        chat = self.path.rstrip("/") == "/v1/chat/completions"
        if not chat and self.path.rstrip("/") != "/v1/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except ValueError:
            return self._send(400, {"error": {"message": "the body is not JSON"}})
        with self.server.lock:
            self.server.count += 1
            self.server.agents[self.headers.get("User-Agent", "")] += 1
            number = self.server.count
        if self.server.fault and (answer := self.server.fault(self.path, body, number)) is not None:
            return self._send(*answer)
        if body.get("model") != self.server.model_name:
            return self._send(404, {"error": {"message": f"model '{body.get('model')}' is not served here"}})
        try:
            params = SamplingParams(
                n=body.get("n", 1),
                temperature=body.get("temperature", 1.0),
                top_p=body.get("top_p", 1.0),
                max_tokens=body.get("max_tokens", 256),
                seed=body.get("seed") or 0,
                stop=body.get("stop") or [],
            )
            request = (
                Request(params, messages=tuple(body["messages"])) if chat else Request(params, prompt=body["prompt"])
            )
        except (KeyError, ValueError) as exc:
            return self._send(400, {"error": {"message": f"bad request: {exc}"}})
        with self.server.lock:
            gen = self.server.backend.generate([request])[0]
        if not gen.ok:
            return self._send(500, {"error": {"message": gen.error}})
        choices = [
            {
                "index": i,
                "finish_reason": r,
                **({"message": {"role": "assistant", "content": t}} if chat else {"text": t}),
            }
            for i, (t, r) in enumerate(zip(gen.texts, gen.finish_reasons, strict=True))
        ]
        self._send(
            200,
            {
                "id": f"df-{number}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.server.model_name,
                "choices": choices,
                "usage": {"completion_tokens": gen.completion_tokens},
            },
        )


def main(argv: list[str] | None = None) -> int:
    from dataforge.llm.client import load_backend
    from dataforge.llm.spec import ModelSpec

    p = argparse.ArgumentParser(prog="python -m dataforge.llm.server", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model path or hub name")
    p.add_argument("--backend", default="transformers", choices=("transformers", "vllm"))
    p.add_argument("--name", help="the model name clients send (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = p.parse_args(argv)
    backend = load_backend(ModelSpec(backend=args.backend, model=args.model))
    server = ModelServer((args.host, args.port), backend, args.name or args.model)
    print(f"serving {args.name or args.model} on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
