"""An OpenAI-compatible server on loopback that answers from a script, for tests with the real openai client.

Each chat request takes the next action of the script (a callable gets the request body and returns one):
  {"reply": text}                                  a chat completion whose message is ``text``
  {"status": 500, "headers": {...}, "echo_auth": True|"upper"}  an error (the key echoed, as a careless server may)
  {"body": bytes|str, "content_type": "...", "status": 200}     any body at all
  {"cut": True}                                    headers promising a body, half of it, then the connection closed
  {"hang": True}                                   no answer until the test ends (only the client's timeout ends it)

A server kind (``ollama()``, ``llamacpp()``, ``vllm()``: keyword arguments for ScriptedServer) adds what
that server answers besides chat, as its documentation shows (Ollama: GET /api/version, POST /api/show
with ``parameters`` and ``model_info``, the native POST /api/chat; llama.cpp: /v1/models ``owned_by``
"llamacpp", /props ``default_generation_settings.n_ctx``; vLLM: /v1/models ``owned_by`` "vllm" with
``max_model_len``), and what it does with a prompt longer than its context, as its issue tracker
reports: Ollama cuts it from the top and answers 200 (the request's ``options.num_ctx``, else its
default of 2048 tokens), llama.cpp and vLLM answer 400. The server counts 4 characters a token.
Whether the JSON schema asked for is honoured is the script's: a reply that follows it, or prose with 200.
"""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


CHARS_PER_TOKEN = 4


def completion(model: str, text: str, prompt_tokens: int = 100) -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 20, "total_tokens": prompt_tokens + 20}}


def ollama(model: str = "llama3.1:8b", num_ctx: int | None = None, context_length: int = 131072) -> dict:
    parameters = 'stop "<|eot_id|>"' + (f"\nnum_ctx {num_ctx}" if num_ctx else "")
    return {"routes": {
        "GET /api/version": {"version": "0.12.3"},
        "GET /v1/models": {"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                       "owned_by": "library"}]},
        "POST /api/show": {"parameters": parameters, "details": {"family": "llama", "parameter_size": "8.0B"},
                           "model_info": {"general.architecture": "llama", "llama.context_length": context_length}},
    }, "context": 2048, "overflow": "truncate"}


def llamacpp(model: str = "qwen2.5-7b-instruct", n_ctx: int = 4096) -> dict:
    return {"routes": {
        "GET /v1/models": {"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                       "owned_by": "llamacpp", "meta": {"n_ctx_train": 32768}}]},
        "GET /props": {"default_generation_settings": {"n_ctx": n_ctx, "params": {}}, "total_slots": 1,
                       "model_path": f"/models/{model}.gguf"},
    }, "context": n_ctx, "overflow": "llamacpp"}


def vllm(model: str = "meta-llama/Llama-3.1-8B-Instruct", max_model_len: int = 8192) -> dict:
    return {"routes": {
        "GET /v1/models": {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "vllm",
                                                       "root": model, "max_model_len": max_model_len}]},
        "GET /version": {"version": "0.11.0"},
    }, "context": max_model_len, "overflow": "vllm"}


def prompt_tokens(messages: list[dict]) -> int:
    return sum(len(str(m.get("content", ""))) for m in messages) // CHARS_PER_TOKEN


class ScriptedServer:
    def __init__(self, script, routes: dict | None = None, context: int | None = None, overflow: str = "truncate"):
        self.script, self.requests = list(script), []
        self.routes, self.context, self.overflow = dict(routes or {}), context, overflow
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

            def _route(self, method: str) -> bool:
                """The server kind's own endpoints; 404 for any other GET, as a server without it answers."""
                path = self.path.split("?")[0]
                if method == "GET" or f"{method} {path}" in server.routes:
                    server.probes.append(f"{method} {path}")
                if f"{method} {path}" in server.routes:
                    self._send(200, json.dumps(server.routes[f"{method} {path}"]).encode(), "application/json")
                    return True
                if method == "GET":
                    self._send(404, b'{"error": "not found"}', "application/json")
                    return True
                return False

            def do_GET(self):
                self._route("GET")

            def _overflow(self, body: dict, native: bool) -> bool:
                """A prompt over the context: cut from the top with 200 (Ollama), or refused with 400."""
                context = (body.get("options") or {}).get("num_ctx", server.context) if native else server.context
                count = prompt_tokens(body["messages"])
                server.requests[-1].update(server_prompt_tokens=count, server_context=context, truncated=False)
                if context is None or count <= context:
                    return False
                if server.overflow == "truncate":  # silently: the history table loses its top rows
                    server.requests[-1]["truncated"] = True
                    keep, messages = context * CHARS_PER_TOKEN, []
                    for m in reversed(body["messages"]):
                        text = str(m.get("content", ""))[-keep:] if keep > 0 else ""
                        keep -= len(text)
                        messages.insert(0, {**m, "content": text})
                    body["messages"] = messages
                    return False
                message = (f"request ({count} tokens) exceeds the available context size ({context} tokens), try "
                           f"increasing it" if server.overflow == "llamacpp" else
                           f"This model's maximum context length is {context} tokens. However, you requested "
                           f"{count} tokens in the messages, Please reduce the length of the messages.")
                self._send(400, json.dumps({"error": {"code": 400, "message": message,
                                                      "type": "exceed_context_size_error"}}).encode(),
                           "application/json")
                return True

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization")
                if self._route("POST"):
                    return
                native = self.path.split("?")[0].endswith("/api/chat")
                server.requests.append({"body": body, "auth": auth, "path": self.path})
                if "messages" in body and self._overflow(body, native):
                    return
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
                # a server kind counts the prompt; the plain scripted server reports 100 tokens
                count = server.requests[-1]["server_prompt_tokens"] if server.context else 100
                if native:  # Ollama's own answer, not a chat completion
                    answer = {"model": body["model"], "created_at": "2025-01-01T00:00:00Z", "done": True,
                              "done_reason": "stop", "message": {"role": "assistant", "content": action["reply"]},
                              "prompt_eval_count": count, "eval_count": 20}
                else:
                    answer = completion(body["model"], action["reply"], count)
                self._send(200, json.dumps(answer).encode(), "application/json")

        self.probes: list[str] = []  # every request other than a chat, as "METHOD /path"
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
