"""Talking to an OpenAI-compatible server: the official client, bounded retries, a transcript.

Works with OpenAI, Azure OpenAI, vLLM, Ollama or llama.cpp through the base URL. The
standard variables OPENAI_API_KEY and OPENAI_BASE_URL are read; --llm-base-url overrides.
The key never reaches a log, the transcript or an error message: everything written passes
through ``redact``.
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from pathnas.errors import ConfigError, InvalidFileError
from pathnas.io import append_jsonl, read_jsonl

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


class LLMUnavailable(RuntimeError):
    """The server could not be reached or kept failing after the bounded retries."""


@dataclass
class LLMReply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    seconds: float


def redact(text: str, secret: str | None) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    return text


def cost_estimate_usd(model: str, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    price = PRICES_PER_MTOK.get(model)
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


class Transcript:
    """JSONL of every request and reply (or error), with tokens, cost estimate and timings."""

    def __init__(self, path: Path, secret: str | None = None):
        self.path = Path(path)
        self.secret = secret

    def record(self, entry: dict) -> None:
        import json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        safe = json.loads(redact(json.dumps(entry), self.secret))
        append_jsonl(self.path, safe)


class ChatClient:
    """One chat completion at a time through ``openai.OpenAI``, with bounded, backed-off retries."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 temperature: float = 0.0, timeout_s: float = 60.0, max_retries: int = 4,
                 backoff_s: float = 1.0, transcript: Transcript | None = None):
        import openai

        self.model, self.temperature = model, temperature
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._key = api_key or os.environ.get("OPENAI_API_KEY") or ("not-needed" if self.base_url else None)
        if self._key is None:
            raise ConfigError("the LLM proposer needs OPENAI_API_KEY (or a local server via --llm-base-url / OPENAI_BASE_URL)")
        # The client's own retries are off: ours are bounded, logged and honour Retry-After.
        self._client = openai.OpenAI(api_key=self._key, base_url=self.base_url, timeout=timeout_s, max_retries=0)
        self._openai = openai
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.transcript = transcript
        if transcript is not None:
            transcript.secret = self._key

    def _retry_delay(self, attempt: int, err: Exception) -> float:
        response = getattr(err, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                return min(60.0, float(retry_after))
            except ValueError:
                pass
        return self.backoff_s * (2**attempt) * (0.5 + random.random() / 2)

    def _retryable(self, err: Exception) -> bool:
        o = self._openai
        if isinstance(err, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError, o.InternalServerError)):
            return True
        return isinstance(err, o.APIStatusError) and err.status_code >= 500

    def chat(self, messages: list[dict], purpose: str, iteration: int) -> LLMReply:
        for attempt in range(self.max_retries + 1):
            start = time.perf_counter()
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature
                )
            except self._openai.OpenAIError as err:
                seconds = time.perf_counter() - start
                message = redact(f"{type(err).__name__}: {err}", self._key)
                self._record(purpose, iteration, attempt, messages, None, message, None, seconds)
                if not self._retryable(err):
                    raise LLMUnavailable(f"the LLM server refused the request ({message})") from None
                if attempt == self.max_retries:
                    raise LLMUnavailable(
                        f"the LLM server failed {attempt + 1} times in a row (last: {message})"
                    ) from None
                delay = self._retry_delay(attempt, err)
                log.warning("LLM request failed (%s); retry %d/%d in %.1f s", message, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
                continue
            seconds = time.perf_counter() - start
            usage = response.usage
            reply = LLMReply(
                response.choices[0].message.content or "",
                getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None), seconds,
            )
            self._record(purpose, iteration, attempt, messages, reply, None, usage, seconds)
            return reply
        raise AssertionError("unreachable")

    def _record(self, purpose, iteration, attempt, messages, reply, error, usage, seconds) -> None:
        if self.transcript is None:
            return
        tokens = (reply.prompt_tokens, reply.completion_tokens) if reply else (None, None)
        self.transcript.record({
            "type": "llm_call", "purpose": purpose, "iteration": iteration, "attempt": attempt,
            "model": self.model, "base_url": self.base_url, "temperature": self.temperature,
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
        self.model = records[0].get("model", "replay")
        self.transcript = transcript

    def chat(self, messages: list[dict], purpose: str, iteration: int) -> LLMReply:
        if self._next >= len(self._records):
            raise LLMUnavailable(f"the transcript has no more replies (used all {len(self._records)})")
        record = self._records[self._next]
        self._next += 1
        if record.get("messages") and record["messages"][-1]["content"] != messages[-1]["content"]:
            log.warning("replay: the prompt of call %d differs from the recorded one", self._next)
        reply = LLMReply(record["reply"], record.get("prompt_tokens"), record.get("completion_tokens"), 0.0)
        if self.transcript is not None:
            self.transcript.record({**record, "replayed": True, "messages": messages})
        return reply
