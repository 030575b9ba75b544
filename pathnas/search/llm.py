"""Talking to an OpenAI-compatible server: the official client, bounded retries, a transcript.

Works with OpenAI, Azure OpenAI, vLLM, Ollama or llama.cpp through the base URL. The
standard variables OPENAI_API_KEY and OPENAI_BASE_URL are read; --llm-base-url overrides.

Local servers differ where it matters (``describe_server``). The kind is told by what the server
says of itself (GET /v1/models: ``owned_by`` "llamacpp" or "vllm"; GET /api/version: Ollama) or
forced with --llm-server. Structured output is asked in each kind's documented form: OpenAI
``response_format`` json_schema (strict); llama.cpp ``response_format`` json_object with a
``schema`` (made a grammar); vLLM ``structured_outputs`` in the body (its older ``guided_json`` is
ignored since v0.12); Ollama's native /api/chat ``format`` (some versions ignore ``response_format``
on /v1, and /v1 ignores ``num_ctx``). A reply is still checked against the schema: a 200 that did
not follow it is unusable, and the transcript says so. The context length is read where the server
says it (vLLM ``max_model_len``, llama.cpp /props ``n_ctx``, Ollama /api/show ``num_ctx`` and
the model's ``context_length``), else --llm-context; Ollama is sent the ``num_ctx`` assumed, so it
never cuts a prompt silently from the top. Prompt tokens are ESTIMATED from characters (the
tokenizer is the server's), calibrated by the counts the server reports.

Whatever the server sends is data. The client does the transport (auth, timeouts, status
errors); the body of a 200 is read here, within bounds, and anything that is not a chat
completion (an HTML page, ``choices: []``, an error body, JSON nested 200,000 deep, an integer
of thousands of digits) becomes a retry with the precise reason, then a clean stop. The key,
and any credentials inside the base URL, never reach a log, the transcript or a message:
everything written passes through the client's ``redact``, the URL is shown without its
credentials, and other libraries' log lines (httpx prints request URLs) are filtered too.
"""
from __future__ import annotations

import logging
import os
import random
import re
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from pathnas.errors import ConfigError, InvalidFileError
from pathnas.io import append_jsonl, read_jsonl
from pathnas.settings import LLM_SERVERS

from .parse import JSONProblem, schema_problem, strict_loads

log = logging.getLogger("pathnas.search.llm")

# USD per million tokens (input, output), public list prices; the cost is an estimate.
PRICES_PER_MTOK = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
}
OPENAI_URL = "https://api.openai.com/v1"
MAX_RESPONSE_BYTES = 2_000_000  # a chat completion of a proposal is a few kB
MAX_TOKENS_FIELD = 10**9
# Ollama's documented default context (docs/modelfile.md, num_ctx); newer versions raise it, so it is the safe floor.
OLLAMA_DEFAULT_CONTEXT = 2048
REPLY_TOKENS = 512  # kept free in the context for the reply (a proposal is a few hundred tokens)
CHARS_PER_TOKEN = 3.0  # the estimate's assumption until a server reports a count: fewer than English's ~4, so safe
MAX_CONTEXT = 10**8
_SECRET_PARAM = re.compile(r"key|token|secret|pass|auth|sig|credential", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


class LLMUnavailable(RuntimeError):
    """The server could not be reached, refused, or kept sending no usable completion after the retries."""


class BadResponse(Exception):
    """A 200 whose body is not a usable chat completion; the message says precisely why."""


@dataclass
class LLMReply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    seconds: float
    schema_problem: str | None = None  # why the reply does not follow the schema asked for (None: it does)


@dataclass(frozen=True)
class ReplySchema:
    """The JSON schema a reply is asked to follow (and checked against), and its name (OpenAI wants one)."""

    name: str
    schema: dict


@dataclass(frozen=True)
class ServerInfo:
    """What kind of server answers, how that is known, and the context its prompts must fit."""

    kind: str
    detected: str
    context_tokens: int | None
    context_source: str

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_tokens(messages: list[dict], chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """An ESTIMATE of a chat's prompt tokens from its characters (the real count is the server's tokenizer's),
    plus a few tokens per message for the chat template."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return int(chars / chars_per_token) + 8 * len(messages) + 8


def calibrated(chars_per_token: float, messages: list[dict], prompt_tokens: int | None) -> float:
    """The estimate's characters per token after a server counted a prompt: its count where that is fewer
    characters per token than assumed (never more, so the estimate only becomes more cautious)."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    if not prompt_tokens or chars < 200:  # a short prompt's count is mostly the chat template's
        return chars_per_token
    return max(1.0, min(chars_per_token, chars / prompt_tokens))


def _count(value) -> int | None:
    """A token count a server reported, if it is one."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_CONTEXT
    return value if ok else None


def untrusted(text: str, limit: int = 300) -> str:
    """Text from a server made safe to quote in one line: whitespace runs as one space, control and
    format characters (ESC, bidi overrides) escaped, the length bounded."""
    text = " ".join(str(text).split())
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def safe_url(url: str) -> tuple[str, list[str]]:
    """The URL as it may be shown and recorded (no user:password, secret-looking query values
    redacted, no fragment), and the secrets taken out of it."""
    parts = urllib.parse.urlsplit(url)
    secrets: list[str] = []
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, has_password, password = userinfo.partition(":")
        # A password is a secret; so is a bare user part (a token), while a user name beside a password is not.
        for value in ([password] if has_password else [user]):
            secrets += [value, urllib.parse.unquote(value)]
    query = []
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_PARAM.search(name) and value:
            secrets.append(value)
            value = "[redacted]"
        query.append((name, value))
    shown = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, urllib.parse.urlencode(query, safe="[]"), ""))
    return shown, [s for s in secrets if len(s) >= 4]


class Redactor:
    """Replaces every secret, in any letter case, by ``[redacted]``; strips credentials from URLs."""

    def __init__(self, secrets: list[str] = ()):
        self.secrets: set[str] = set()
        self._pattern: re.Pattern | None = None
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        self.secrets |= {s for s in secrets if s and len(s) >= 4}
        if self.secrets:  # longest first, so a secret containing another is replaced whole
            alternatives = "|".join(re.escape(s) for s in sorted(self.secrets, key=len, reverse=True))
            self._pattern = re.compile(alternatives, re.IGNORECASE)

    def __call__(self, text: str) -> str:
        text = _URL_USERINFO.sub(r"\1", text)
        return self._pattern.sub("[redacted]", text) if self._pattern else text

    def walk(self, value):
        """A JSON-able value with every string in it redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self.walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.walk(v) for v in value]
        return value


class _LogRedaction(logging.Filter):
    """On every handler of the root logger: the search's own lines and other libraries' (httpx
    prints each request's URL, openai its request options at debug) lose any secret."""

    redactor = Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redactor(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_LOG_FILTER = _LogRedaction()


def _protect_logs(secrets: list[str]) -> None:
    _LOG_FILTER.redactor.add(*secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_LOG_FILTER)  # idempotent


def cost_estimate_usd(model: str, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    price = PRICES_PER_MTOK.get(model)
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


def _json_body(body: bytes, content_type: str, what: str = "a JSON chat completion") -> dict:
    """A 200's body as a JSON object; BadResponse naming what is wrong otherwise (HTML, not JSON, an error body)."""
    if len(body) > MAX_RESPONSE_BYTES:
        raise BadResponse(f"status 200 with a body of {len(body):,} bytes (at most {MAX_RESPONSE_BYTES:,} are read)")
    text = body.decode("utf-8", errors="replace")
    content_type = content_type or "no content type"
    if text.lstrip()[:1] == "<" or "html" in content_type.lower():
        raise BadResponse(f"status 200 with an HTML page ({untrusted(content_type, 60)}), not {what}; "
                          f"it starts: {untrusted(text, 80)}")
    try:
        data = strict_loads(text, "the response", MAX_RESPONSE_BYTES)
    except JSONProblem as err:
        raise BadResponse(f"status 200 but {err} ({untrusted(content_type, 60)})") from None
    if not isinstance(data, dict):
        raise BadResponse(f"status 200 with a JSON {type(data).__name__}, not {what}")
    if "error" in data and not data.get("choices") and not data.get("message"):
        error = data["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise BadResponse(f"status 200 with an error body: {untrusted(str(message), 200)}")
    return data


def read_completion(body: bytes, content_type: str) -> tuple[str, int | None, int | None]:
    """The reply text and token counts of a 200's body; BadResponse naming what is wrong otherwise."""
    data = _json_body(body, content_type)
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise BadResponse('status 200 but the response has no "choices" list')
    if not choices:
        raise BadResponse("status 200 with an empty choices list (choices: [])")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        refusal = message.get("refusal") if isinstance(message, dict) else None
        if isinstance(refusal, str) and refusal:
            raise BadResponse(f"the model refused: {untrusted(refusal, 200)}")
        raise BadResponse("status 200 but the first choice holds no message text")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def tokens(name: str) -> int | None:
        value = usage.get(name)
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_TOKENS_FIELD
        return value if ok else None

    return content, tokens("prompt_tokens"), tokens("completion_tokens")


def read_ollama_chat(body: bytes, content_type: str) -> tuple[str, int | None, int | None]:
    """The reply text and token counts of Ollama's native /api/chat answer (stream off): ``message.content``,
    ``prompt_eval_count`` and ``eval_count``."""
    data = _json_body(body, content_type, "an Ollama chat answer")
    message = data.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise BadResponse('status 200 but the answer holds no "message" with text (Ollama /api/chat)')
    return content, _count(data.get("prompt_eval_count")), _count(data.get("eval_count"))


class Transcript:
    """JSONL of every request and reply (or error), with tokens, cost estimate and timings; also the
    proposals refused before evaluation and the iterations an offline proposer stood in for the LLM."""

    def __init__(self, path: Path, redactor: Redactor | None = None):
        self.path = Path(path)
        self.redactor = redactor or Redactor()

    def record(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.path, self.redactor.walk(entry))

    def entries(self, kind: str) -> list[dict]:
        return [r for r in read_jsonl(self.path) if r.get("type") == kind] if self.path.exists() else []


class ChatClient:
    """One chat completion at a time through ``openai.OpenAI``, with bounded, backed-off retries."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 temperature: float = 0.0, timeout_s: float = 60.0, max_retries: int = 4,
                 backoff_s: float = 1.0, transcript: Transcript | None = None, server: str = "auto",
                 context_tokens: int | None = None):
        import openai

        if server != "auto" and server not in LLM_SERVERS:
            raise ConfigError(f"--llm-server {server!r}: allowed values are auto, {', '.join(LLM_SERVERS)}")
        self.model, self.temperature = model, temperature
        self.server_asked, self.context_asked, self.timeout_s = server, context_tokens, timeout_s
        self._server: ServerInfo | None = None
        self.chars_per_token = CHARS_PER_TOKEN
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY") or ("not-needed" if self.base_url else None)
        if key is None:
            raise ConfigError("the LLM proposer needs OPENAI_API_KEY (or a local server via --llm-base-url / "
                              "OPENAI_BASE_URL)")
        self.url, url_secrets = safe_url(self.base_url or OPENAI_URL)
        self.redact = Redactor([key, *url_secrets])
        _protect_logs([key, *url_secrets])
        # The client's own retries are off: ours are bounded, logged and honour Retry-After.
        self._client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout_s, max_retries=0)
        self._openai = openai
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.transcript = transcript
        if transcript is not None:
            transcript.redactor = self.redact

    def _retry_delay(self, attempt: int, err: Exception | None) -> float:
        response = getattr(err, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                seconds = float(retry_after)
                if seconds == seconds:  # not NaN
                    return min(60.0, max(0.0, seconds))
            except ValueError:
                pass
        return self.backoff_s * (2**attempt) * (0.5 + random.random() / 2)

    def _retryable(self, err: Exception) -> bool:
        o = self._openai
        if isinstance(err, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError, o.InternalServerError)):
            return True
        return isinstance(err, o.APIStatusError) and err.status_code >= 500

    # -- what the server is -----------------------------------------------------------------
    @property
    def root(self) -> str:
        """The server's root (the base URL without its trailing /v1): where /props, /api/... live."""
        parts = urllib.parse.urlsplit(self.base_url or OPENAI_URL)
        path = parts.path.rstrip("/")
        path = path[: -len("/v1")] if path.endswith("/v1") else path
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    def _probe(self, url: str, body: dict | None = None):
        """The JSON a GET (or a POST of ``body``) answers, or None for anything else: a probe is evidence only."""
        import httpx

        client = self._client.with_options(timeout=min(self.timeout_s, 10.0))
        try:
            raw = (client.get(url, cast_to=httpx.Response) if body is None
                   else client.post(url, cast_to=httpx.Response, body=body))
            return strict_loads(raw.content[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace"), "the answer",
                                MAX_RESPONSE_BYTES)
        except (self._openai.OpenAIError, JSONProblem, httpx.HTTPError):
            return None

    def _detect(self) -> tuple[str, str, dict | None]:
        """The server's kind from what it says of itself, how that was told, and the model's card."""
        listing = self._probe("models")  # relative: joined to the base URL as the chat requests are
        cards = listing.get("data") if isinstance(listing, dict) else None
        cards = [c for c in cards if isinstance(c, dict)] if isinstance(cards, list) else []
        card = next((c for c in cards if c.get("id") == self.model), cards[0] if cards else None)
        owners = {c.get("owned_by") for c in cards}
        for owner, kind in (("llamacpp", "llamacpp"), ("vllm", "vllm")):  # llama.cpp's and vLLM's own marks
            if owner in owners:
                return kind, f'GET /v1/models lists owned_by "{owner}"', card
        version = self._probe(f"{self.root}/api/version")
        if isinstance(version, dict) and isinstance(version.get("version"), str):
            return "ollama", f"GET /api/version answers (Ollama {untrusted(version['version'], 40)})", card
        return "openai", "no vLLM, llama.cpp or Ollama mark in its answers: an OpenAI-compatible server", card

    def _server_context(self, kind: str, card: dict | None) -> tuple[int | None, str, int | None]:
        """The context the server says a request gets, where it says it, and the model's most (Ollama)."""
        if kind == "vllm":
            if card is None:
                listing = self._probe("models")
                cards = listing.get("data") if isinstance(listing, dict) else None
                card = next((c for c in cards if isinstance(c, dict) and c.get("id") == self.model), None) \
                    if isinstance(cards, list) else None
            if isinstance(card, dict) and _count(card.get("max_model_len")):
                return card["max_model_len"], "vLLM /v1/models max_model_len", None
        elif kind == "llamacpp":
            props = self._probe(f"{self.root}/props")
            if isinstance(props, dict):
                slot = props.get("default_generation_settings")
                n_ctx = _count(slot.get("n_ctx")) if isinstance(slot, dict) else None
                if n_ctx or _count(props.get("n_ctx")):
                    return n_ctx or props["n_ctx"], "llama.cpp /props n_ctx (per slot)", None
            meta = card.get("meta") if isinstance(card, dict) else None
            if isinstance(meta, dict) and _count(meta.get("n_ctx")):
                return meta["n_ctx"], "llama.cpp /v1/models meta.n_ctx", None
        elif kind == "ollama":
            show = self._probe(f"{self.root}/api/show", {"model": self.model})
            if isinstance(show, dict):
                info = show.get("model_info") if isinstance(show.get("model_info"), dict) else {}
                most = max((v for k, v in info.items() if str(k).endswith(".context_length") and _count(v)),
                           default=None)
                params = show.get("parameters") if isinstance(show.get("parameters"), str) else ""
                found = re.search(r"^\s*num_ctx\s+(\d{1,9})\s*$", params, re.MULTILINE)
                if found:
                    return int(found.group(1)), "Ollama /api/show parameters num_ctx", most
                return None, "", most
        return None, "", None

    @property
    def server(self) -> ServerInfo:
        """The server's kind and context, found once (on the first request) and recorded in the transcript."""
        if self._server is not None:
            return self._server
        card = None
        if self.server_asked != "auto":
            kind, detected = self.server_asked, "--llm-server"
        elif self.base_url is None:
            kind, detected = "openai", "no --llm-base-url: the OpenAI API"
        else:
            kind, detected, card = self._detect()
        context, source, most = self._server_context(kind, card) if self.base_url else (None, "", None)
        if context is None and self.context_asked:
            context, source = self.context_asked, "--llm-context"
        if context is None and kind == "ollama":
            context, source = OLLAMA_DEFAULT_CONTEXT, f"Ollama's default num_ctx {OLLAMA_DEFAULT_CONTEXT}"
        if context is not None and most is not None and context > most:
            context, source = most, f"{source}, capped at the model's context_length"
        self._server = ServerInfo(kind, detected, context, source or "unknown: prompts are not shortened")
        shown = f"{context:,} tokens ({self._server.context_source})" if context else self._server.context_source
        log.info("LLM server at %s: %s (%s); context %s", self.url, kind, detected, shown)
        if self.transcript is not None:
            self.transcript.record({"type": "llm_server", "base_url": self.url, **self._server.as_dict()})
        return self._server

    def prompt_limit(self) -> int | None:
        """Tokens a prompt may take: the context less what the reply needs (None: no limit is known)."""
        context = self.server.context_tokens
        return None if context is None else max(0, context - REPLY_TOKENS)

    def estimate_tokens(self, messages: list[dict]) -> int:
        return estimate_tokens(messages, self.chars_per_token)

    # -- one request -------------------------------------------------------------------------
    def _request(self, messages: list[dict], schema: ReplySchema | None) -> LLMReply:
        start = time.perf_counter()
        kind = self.server.kind
        if kind == "ollama":  # the native API: `format` and `num_ctx` are honoured there, not on /v1
            import httpx

            options: dict = {"temperature": self.temperature}
            if self.server.context_tokens:
                options["num_ctx"] = self.server.context_tokens
            body = {"model": self.model, "messages": messages, "stream": False, "options": options,
                    **({"format": schema.schema} if schema else {})}
            raw = self._client.post(f"{self.root}/api/chat", cast_to=httpx.Response, body=body)
            text, prompt_tokens, completion_tokens = read_ollama_chat(raw.content, raw.headers.get("content-type", ""))
            return LLMReply(text, prompt_tokens, completion_tokens, time.perf_counter() - start)
        extra: dict = {}
        if schema is not None and kind == "openai":
            extra["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": schema.name, "strict": True, "schema": schema.schema}}
        elif schema is not None and kind == "llamacpp":  # turned into a grammar by the server
            extra["response_format"] = {"type": "json_object", "schema": schema.schema}
        elif schema is not None and kind == "vllm":
            extra["extra_body"] = {"structured_outputs": {"json": schema.schema}}
        raw = self._client.chat.completions.with_raw_response.create(
            model=self.model, messages=messages, temperature=self.temperature, **extra)
        text, prompt_tokens, completion_tokens = read_completion(raw.content, raw.headers.get("content-type", ""))
        return LLMReply(text, prompt_tokens, completion_tokens, time.perf_counter() - start)

    def chat(self, messages: list[dict], purpose: str, iteration: int, schema: ReplySchema | None = None) -> LLMReply:
        estimate = self.estimate_tokens(messages)
        for attempt in range(self.max_retries + 1):
            start = time.perf_counter()
            retryable, cause = True, None
            try:
                reply = self._request(messages, schema)
            except self._openai.OpenAIError as err:
                error, retryable, cause = f"{type(err).__name__}: {err}", self._retryable(err), err
            except BadResponse as err:
                error = str(err)
            except Exception as err:  # noqa: BLE001 - the client tripped over what the server sent
                error = f"the response could not be read ({type(err).__name__}: {err})"
            else:
                reply.schema_problem = schema_problem(reply.text, schema.schema) if schema else None
                self.chars_per_token = calibrated(self.chars_per_token, messages, reply.prompt_tokens)
                self._record(purpose, iteration, attempt, messages, reply, None, reply.seconds, schema, estimate)
                return reply
            message = untrusted(self.redact(error))
            self._record(purpose, iteration, attempt, messages, None, message, time.perf_counter() - start, schema,
                         estimate)
            if not retryable:
                raise LLMUnavailable(f"the LLM server at {self.url} refused the request ({message})") from None
            if attempt == self.max_retries:
                raise LLMUnavailable(f"the LLM server at {self.url} failed {attempt + 1} times in a row "
                                     f"(last: {message})") from None
            delay = self._retry_delay(attempt, cause)
            log.warning("LLM request failed (%s); retry %d/%d in %.1f s", message, attempt + 1, self.max_retries,
                        delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _record(self, purpose, iteration, attempt, messages, reply, error, seconds, schema=None, estimate=None) -> None:
        if self.transcript is None:
            return
        tokens = (reply.prompt_tokens, reply.completion_tokens) if reply else (None, None)
        server = self.server
        self.transcript.record({
            "type": "llm_call", "purpose": purpose, "iteration": iteration, "attempt": attempt,
            "model": self.model, "base_url": self.url, "server": server.kind, "temperature": self.temperature,
            "messages": messages, "reply": reply.text if reply else None, "error": error,
            "schema": schema.name if schema else None,
            # a 200 that did not follow the schema: unusable, whatever it holds
            "schema_followed": (reply.schema_problem is None) if reply and schema else None,
            "schema_problem": reply.schema_problem if reply else None,
            "prompt_tokens": tokens[0], "completion_tokens": tokens[1],
            "prompt_tokens_estimate": estimate, "context_tokens": server.context_tokens,
            "cost_usd_estimate": cost_estimate_usd(self.model, *tokens), "seconds": round(seconds, 4),
        })


class ReplayClient:
    """Plays back the replies of a transcript in order: a search re-run with no network."""

    def __init__(self, transcript_path: Path, transcript: Transcript | None = None):
        records = [r for r in read_jsonl(transcript_path) if r.get("type") == "llm_call" and r.get("reply") is not None]
        if not records:
            raise InvalidFileError(f"{transcript_path}: no LLM replies to replay")
        self._records = records
        self._next = 0
        self.model = str(records[0].get("model", "replay"))
        self.url = f"replay of {transcript_path}"
        self.redact = transcript.redactor if transcript is not None else Redactor()
        self.transcript = transcript
        # the context the recorded search fitted its prompts to, so the replayed prompts are shortened alike
        self.context_tokens = next((r["context_tokens"] for r in records if _count(r.get("context_tokens"))), None)
        self.chars_per_token = CHARS_PER_TOKEN

    def prompt_limit(self) -> int | None:
        return None if self.context_tokens is None else max(0, self.context_tokens - REPLY_TOKENS)

    def estimate_tokens(self, messages: list[dict]) -> int:
        return estimate_tokens(messages, self.chars_per_token)

    def chat(self, messages: list[dict], purpose: str, iteration: int, schema: ReplySchema | None = None) -> LLMReply:
        if self._next >= len(self._records):
            raise LLMUnavailable(f"the transcript has no more replies (used all {len(self._records)})")
        record = self._records[self._next]
        self._next += 1
        recorded = record.get("messages")
        if isinstance(recorded, list) and recorded and recorded[-1].get("content") != messages[-1]["content"]:
            log.warning("replay: the prompt of call %d differs from the recorded one", self._next)
        reply = LLMReply(str(record["reply"]), record.get("prompt_tokens"), record.get("completion_tokens"), 0.0)
        reply.schema_problem = schema_problem(reply.text, schema.schema) if schema else None
        self.chars_per_token = calibrated(self.chars_per_token, messages, _count(reply.prompt_tokens))
        if self.transcript is not None:
            self.transcript.record({**record, "replayed": True, "messages": messages})
        return reply
