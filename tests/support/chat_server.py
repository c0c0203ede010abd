"""An OpenAI-compatible chat server for tests and benchmarks, on loopback: it answers `/v1/chat/completions` itself
(a fixed Korean summary naming the dialogue's speakers) or forwards to an upstream server (e.g. `transformers
serve`) as a proxy, and injects faults: 429 with Retry-After, 500, added delays, dropped connections, malformed
JSON, empty answers and a 401 that echoes the key it was sent. Every request it receives is logged (a hash of
its messages, its seed and the fault it got), in memory and, with `log_path`, one JSON line each, so a test in
another process can count what reached the server.

    server = ChatServer(faults={1: "429", 2: "500"}, latency=0.2).start()
    ... base_url = server.url ...
    server.stop()

Usage (standalone, e.g. for `dialsum train` by hand):
    python tests/support/chat_server.py --port 8765 --log requests.jsonl [--latency 0.2]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "drop", "malformed", "delay", "empty", "auth")
SUMMARY = "#Person1#과 #Person2#가 대화를 나눕니다."


def summary_for(messages: list[dict]) -> str:
    """The fixed summary, naming the speakers of the last user message's dialogue."""
    speakers = sorted(set(re.findall(r"#Person\d+#", messages[-1]["content"] if messages else "")))
    if len(speakers) >= 2:
        return f"{speakers[0]}과 {speakers[1]}가 대화를 나눕니다."
    return SUMMARY


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that went away (killed, timed out) is part of the tests, not an error to print."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ChatServer:
    def __init__(
        self,
        faults: dict[int, str] | None = None,
        latency: float = 0.0,
        retry_after: str = "1",
        fail_matching: str | None = None,
        upstream: str | None = None,
        log_path=None,
        delay_seconds: float = 3.0,
        port: int = 0,
    ) -> None:
        self.faults, self.latency, self.retry_after = dict(faults or {}), latency, retry_after
        self.fail_matching, self.upstream, self.log_path = fail_matching, upstream, log_path
        self.delay_seconds = delay_seconds
        self.requests: list[dict] = []
        self.authorizations: set[str] = set()
        self.upstream_conns = threading.local()
        self._lock = threading.Lock()
        self.httpd = _Quiet(("127.0.0.1", port), self._handler())
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def record(self, body: dict, fault: str | None) -> int:
        digest = hashlib.sha256(json.dumps(body.get("messages"), ensure_ascii=False).encode()).hexdigest()[:16]
        with self._lock:
            entry = {
                "n": len(self.requests) + 1,
                "messages": digest,
                "seed": body.get("seed"),
                "fault": fault,
                "t": time.time(),
            }
            self.requests.append(entry)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(entry) + "\n")
            return entry["n"]

    def fault_for(self, n: int, body: dict) -> str | None:
        if self.fail_matching and self.fail_matching in json.dumps(body.get("messages"), ensure_ascii=False):
            return "500"
        return self.faults.get(n)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                with server._lock:
                    n = len(server.requests) + 1
                fault = server.fault_for(n, body)
                server.record(body, fault)
                server.authorizations.add(self.headers.get("Authorization", ""))
                if server.latency:
                    time.sleep(server.latency)
                if fault == "429":
                    return self._send(
                        429, b'{"error": {"message": "rate limited"}}', {"Retry-After": server.retry_after}
                    )
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if fault == "auth":  # a careless server that echoes the credentials it refused
                    echo = json.dumps({"error": {"message": f"invalid key {self.headers.get('Authorization')}"}})
                    return self._send(401, echo.encode())
                if fault == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [ {"message": ')
                if fault == "delay":
                    time.sleep(server.delay_seconds)
                if server.upstream:
                    return self._forward(raw)
                text = "" if fault == "empty" else summary_for(body.get("messages") or [])
                prompt = sum(len(m.get("content", "")) for m in body.get("messages") or [])
                reply = {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "fake"),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": len(text),
                        "total_tokens": prompt + len(text),
                    },
                }
                return self._send(200, json.dumps(reply, ensure_ascii=False).encode())

            def _forward(self, raw: bytes) -> None:
                """Relay to the upstream over this thread's kept-alive connection (one more on a dropped one)."""
                target = urllib.parse.urlsplit(server.upstream.rstrip("/") + "/chat/completions")
                for attempt in (0, 1):
                    conn = getattr(server.upstream_conns, "conn", None)
                    if conn is None:
                        conn = server.upstream_conns.conn = http.client.HTTPConnection(target.netloc, timeout=120)
                    try:
                        conn.request("POST", target.path, body=raw, headers={"Content-Type": "application/json"})
                        response = conn.getresponse()
                        return self._send(response.status, response.read())
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        server.upstream_conns.conn = None
                        if attempt:
                            raise

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--upstream")
    args = parser.parse_args()
    server = ChatServer(latency=args.latency, upstream=args.upstream, log_path=args.log, port=args.port)
    print(server.url, flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
