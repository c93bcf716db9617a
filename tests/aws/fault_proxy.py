#!/usr/bin/env python3
"""Reverse proxy in front of moto that counts EC2 calls and injects faults.

The daemon talks to EC2 through this proxy (AWS_ENDPOINT_URL_EC2), so tests can
prove retry/backoff behaviour and assert how many API calls a reconcile made.

Control endpoints (JSON):
  POST /__fault  {"action": "ReplaceRoute", "status": 503,
                  "code": "RequestLimitExceeded", "message": "...", "count": 1,
                  "delay_ms": 0}
        The next `count` calls whose Action matches ("*" = any) get an EC2-style
        XML error with `status` (default 503 / RequestLimitExceeded), after
        sleeping `delay_ms`.  With "status": 0 the call is only delayed, then
        passed through (for timeout tests).  Rules queue up; first match wins.
  GET  /__calls  {"DescribeRouteTables": 2, ...} - every call since the last
        reset, faulted ones included (the daemon did make them).
  GET  /__faults {"pending": [rules...], "injected": {"ReplaceRoute": 1}}
  GET  /__arrivals [{"action": "CreateRoute", "t": 1764460000.123, "from": "127.0.0.1"}, ...]
        every call in arrival order with the wall-clock time (epoch seconds) the
        whole request had arrived, so tests can assert *when* writes reached EC2.
  POST /__reset  clears counts, arrivals and pending rules.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
              "te", "trailer", "upgrade", "content-length", "host"}


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls, self.injected, self.rules = Counter(), Counter(), []
        self.arrivals = []

    def take_rule(self, action, arrived, sender):
        with self.lock:
            self.calls[action] += 1
            self.arrivals.append({"action": action, "t": arrived, "from": sender})
            for rule in self.rules:
                if rule["action"] in ("*", action):
                    rule["count"] -= 1
                    if rule["count"] <= 0:
                        self.rules.remove(rule)
                    if rule.get("status", 503):
                        self.injected[action] += 1
                    return dict(rule)
        return None


def ec2_error(code, message):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def action_of(path, body):
    """EC2 Query API: Action is a form field of the POST body (or in the query string)."""
    for raw in (body.decode("utf-8", "replace"), urllib.parse.urlsplit(path).query):
        vals = urllib.parse.parse_qs(raw).get("Action")
        if vals:
            return vals[0]
    return "-"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def respond(self, status, body, ctype="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, obj, status=200):
        self.respond(status, json.dumps(obj).encode())

    def handle_any(self):
        st = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        arrived = time.time()
        path = urllib.parse.urlsplit(self.path).path

        if path == "/__calls" and self.command == "GET":
            with st.lock:
                return self.send_json(dict(st.calls))
        if path == "/__faults" and self.command == "GET":
            with st.lock:
                return self.send_json({"pending": st.rules, "injected": dict(st.injected)})
        if path == "/__arrivals" and self.command == "GET":
            with st.lock:
                return self.send_json(list(st.arrivals))
        if path == "/__reset" and self.command == "POST":
            with st.lock:
                st.calls.clear(); st.injected.clear(); st.rules.clear(); st.arrivals.clear()
            return self.send_json({"ok": True})
        if path == "/__fault" and self.command == "POST":
            try:
                rule = json.loads(body or b"{}")
                rule.setdefault("action", "*")
                rule["count"] = int(rule.get("count", 1))
                rule["status"] = int(rule.get("status", 503))
            except (ValueError, TypeError, AttributeError) as e:
                return self.send_json({"error": str(e)}, 400)
            with st.lock:
                st.rules.append(rule)
            return self.send_json({"ok": True, "rule": rule})

        action = action_of(self.path, body)
        rule = st.take_rule(action, arrived, self.client_address[0])
        if rule:
            time.sleep(rule.get("delay_ms", 0) / 1000)
            if rule["status"]:
                code = rule.get("code") or ("InternalError" if rule["status"] == 500 else "RequestLimitExceeded")
                self.log_message("FAULT %s -> %d %s", action, rule["status"], code)
                return self.respond(rule["status"], ec2_error(code, rule.get("message", "Injected by fault_proxy")),
                                 "text/xml;charset=UTF-8")
        self.forward(body)

    def forward(self, body):
        up = self.server.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            # Keep the client's Host: SigV4 signs it (moto does not verify, but be faithful).
            headers["Host"] = self.headers.get("Host", up.netloc)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            hdrs = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP | {"content-type"}]
            self.respond(resp.status, data, resp.getheader("Content-Type", "text/xml"), hdrs)
        except OSError as e:
            self.respond(502, ec2_error("ServiceUnavailable", f"fault_proxy: upstream {e}"), "text/xml")
        finally:
            conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True, help="moto base URL, e.g. http://127.0.0.1:41234")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file")
    args = p.parse_args()

    srv = ThreadingHTTPServer((args.bind, args.port), Handler)
    srv.daemon_threads = True
    srv.state, srv.upstream = State(), urllib.parse.urlsplit(args.upstream)
    port = srv.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"fault_proxy listening on {args.bind}:{port} -> {args.upstream}", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
