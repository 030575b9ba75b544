"""Talking to an OpenAI-compatible server: the official client, bounded retries, a transcript.

Works with OpenAI, Azure OpenAI, vLLM, Ollama or llama.cpp through the base URL. The
standard variables OPENAI_API_KEY and OPENAI_BASE_URL are read; --llm-base-url overrides.

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
from dataclasses import dataclass
from pathlib import Path

from pathnas.errors import ConfigError, InvalidFileError
from pathnas.io import append_jsonl, read_jsonl

from .parse import JSONProblem, strict_loads

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


def read_completion(body: bytes, content_type: str) -> tuple[str, int | None, int | None]:
    """The reply text and token counts of a 200's body; BadResponse naming what is wrong otherwise."""
    if len(body) > MAX_RESPONSE_BYTES:
        raise BadResponse(f"status 200 with a body of {len(body):,} bytes (at most {MAX_RESPONSE_BYTES:,} are read)")
    text = body.decode("utf-8", errors="replace")
    content_type = content_type or "no content type"
    if text.lstrip()[:1] == "<" or "html" in content_type.lower():
        raise BadResponse(f"status 200 with an HTML page ({untrusted(content_type, 60)}), not a JSON chat "
                          f"completion; it starts: {untrusted(text, 80)}")
    try:
        data = strict_loads(text, "the response", MAX_RESPONSE_BYTES)
    except JSONProblem as err:
        raise BadResponse(f"status 200 but {err} ({untrusted(content_type, 60)})") from None
    if not isinstance(data, dict):
        raise BadResponse(f"status 200 with a JSON {type(data).__name__}, not a chat completion object")
    choices = data.get("choices")
    if "error" in data and not choices:
        error = data["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise BadResponse(f"status 200 with an error body: {untrusted(str(message), 200)}")
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
                 backoff_s: float = 1.0, transcript: Transcript | None = None):
        import openai

        self.model, self.temperature = model, temperature
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

    def _request(self, messages: list[dict]) -> LLMReply:
        start = time.perf_counter()
        raw = self._client.chat.completions.with_raw_response.create(
            model=self.model, messages=messages, temperature=self.temperature)
        text, prompt_tokens, completion_tokens = read_completion(raw.content, raw.headers.get("content-type", ""))
        return LLMReply(text, prompt_tokens, completion_tokens, time.perf_counter() - start)

    def chat(self, messages: list[dict], purpose: str, iteration: int) -> LLMReply:
        for attempt in range(self.max_retries + 1):
            start = time.perf_counter()
            retryable, cause = True, None
            try:
                reply = self._request(messages)
            except self._openai.OpenAIError as err:
                error, retryable, cause = f"{type(err).__name__}: {err}", self._retryable(err), err
            except BadResponse as err:
                error = str(err)
            except Exception as err:  # noqa: BLE001 - the client tripped over what the server sent
                error = f"the response could not be read ({type(err).__name__}: {err})"
            else:
                self._record(purpose, iteration, attempt, messages, reply, None, reply.seconds)
                return reply
            message = untrusted(self.redact(error))
            self._record(purpose, iteration, attempt, messages, None, message, time.perf_counter() - start)
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

    def _record(self, purpose, iteration, attempt, messages, reply, error, seconds) -> None:
        if self.transcript is None:
            return
        tokens = (reply.prompt_tokens, reply.completion_tokens) if reply else (None, None)
        self.transcript.record({
            "type": "llm_call", "purpose": purpose, "iteration": iteration, "attempt": attempt,
            "model": self.model, "base_url": self.url, "temperature": self.temperature,
            "messages": messages, "reply": reply.text if reply else None, "error": error,
            "prompt_tokens": tokens[0], "completion_tokens": tokens[1],
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

    def chat(self, messages: list[dict], purpose: str, iteration: int) -> LLMReply:
        if self._next >= len(self._records):
            raise LLMUnavailable(f"the transcript has no more replies (used all {len(self._records)})")
        record = self._records[self._next]
        self._next += 1
        recorded = record.get("messages")
        if isinstance(recorded, list) and recorded and recorded[-1].get("content") != messages[-1]["content"]:
            log.warning("replay: the prompt of call %d differs from the recorded one", self._next)
        reply = LLMReply(str(record["reply"]), record.get("prompt_tokens"), record.get("completion_tokens"), 0.0)
        if self.transcript is not None:
            self.transcript.record({**record, "replayed": True, "messages": messages})
        return reply
