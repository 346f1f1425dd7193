"""An OpenAI-compatible judge server, run as its own process, for the tests that kill and restart a judge mid-run.

usage: python judge_server.py PORT

``POST /v1/chat/completions`` answers a consistency verdict, ``<score>1</score>`` or ``<score>0</score>``, decided by
the SHA-256 of the prompt: the same question always gets the same verdict, in this process or a restarted one, so a
run scored by it is reproducible. ``GET /v1/models`` answers once the server listens (the readiness check).
"""

import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send(200, {"object": "list", "data": [{"id": "judge-8b", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        verdict = hashlib.sha256(prompt.encode()).digest()[0] % 2
        content = f"The answer follows from the reasoning or it does not.\n<score>{verdict}</score>"
        self.send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

    def send(self, status, data):
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
