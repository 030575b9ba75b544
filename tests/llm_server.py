"""An OpenAI-compatible server on loopback that answers from a script, for tests with the real openai client.

Each request takes the next action of the script (a callable gets the request body and returns one):
  {"reply": text}                                  a chat completion whose message is ``text``
  {"status": 500, "headers": {...}, "echo_auth": True|"upper"}  an error (the key echoed, as a careless server may)
  {"body": bytes|str, "content_type": "...", "status": 200}     any body at all
  {"cut": True}                                    headers promising a body, half of it, then the connection closed
  {"hang": True}                                   no answer until the test ends (only the client's timeout ends it)
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(model: str, text: str) -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}


class ScriptedServer:
    def __init__(self, script):
        self.script, self.requests = list(script), []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization")
                server.requests.append({"body": body, "auth": auth, "path": self.path})
                action = server.script.pop(0) if server.script else {"status": 500}
                if callable(action):
                    action = action(body)
                if action.get("hang"):
                    server.release.wait(60)
                    return
                if action.get("cut"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "4000")
                    self.end_headers()
                    self.wfile.write(b'{"id": "c1", "object": "chat.completion", "choi')
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if "body" in action:
                    raw = action["body"] if isinstance(action["body"], bytes) else action["body"].encode()
                    self._send(action.get("status", 200), raw, action.get("content_type", "application/json"),
                               action.get("headers"))
                    return
                if action.get("status", 200) != 200:
                    echo = action.get("echo_auth")
                    shown = (auth.upper() if echo == "upper" else auth) if echo else None
                    message = f"scripted failure for {shown}" if echo else "scripted failure"
                    self._send(action["status"], json.dumps({"error": {"message": message, "type": "server_error"}})
                               .encode(), "application/json", action.get("headers"))
                    return
                self._send(200, json.dumps(completion(body["model"], action["reply"])).encode(), "application/json")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def prompts(self) -> list[str]:
        return [r["body"]["messages"][-1]["content"] for r in self.requests]

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
