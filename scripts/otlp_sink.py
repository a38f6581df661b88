#!/usr/bin/env python3
"""A minimal OTLP/HTTP JSON traces receiver for benchmarks and manual checks.

Accepts `POST /v1/traces`, answers 200 `{}`, counts the spans it was sent and prints the count
every 5 s (and the first request's span names with `--show`). Standard library only.

    python3 scripts/otlp_sink.py --port 4318 [--show]
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"requests": 0, "spans": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    show = False

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        try:
            request = json.loads(body)
            spans = [
                span
                for resource in request.get("resourceSpans", [])
                for scope in resource.get("scopeSpans", [])
                for span in scope.get("spans", [])
            ]
        except (ValueError, AttributeError):
            self.send_response(400)
            self.end_headers()
            return
        with lock:
            first = counts["requests"] == 0
            counts["requests"] += 1
            counts["spans"] += len(spans)
        if first and Handler.show:
            print("first batch:", [s.get("name") for s in spans], flush=True)
        reply = b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def report():
    while True:
        time.sleep(5)
        with lock:
            print(f"requests={counts['requests']} spans={counts['spans']}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--show", action="store_true")
    args = parser.parse_args()
    Handler.show = args.show
    threading.Thread(target=report, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
