"""Which proposer a search runs, and building it: one entry per name of pathnas.settings.PROPOSERS."""
from __future__ import annotations

import os
from typing import Callable

from pathnas.settings import OFFLINE_PROPOSER, PROPOSERS, SearchSettings

from .bo import PriorGuidedProposer
from .llm import ChatClient, ReplayClient, Transcript
from .proposers import EvolutionProposer, LLMProposer, LLMRankProposer, RandomProposer


def _llm_configured(settings: SearchSettings) -> bool:
    return bool(settings.replay or settings.llm_base_url or os.environ.get("OPENAI_API_KEY")
                or os.environ.get("OPENAI_BASE_URL"))


def choose_proposer(settings: SearchSettings) -> tuple[str, str]:
    """The proposer to run, and why (``auto``: an LLM when one is configured, else the offline default)."""
    if settings.proposer != "auto":
        return settings.proposer, "asked for with --proposer"
    if _llm_configured(settings):
        return "llm", "auto: an LLM is configured (--replay, --llm-base-url, OPENAI_API_KEY or OPENAI_BASE_URL)"
    return OFFLINE_PROPOSER, (f"auto: no LLM is configured (no OPENAI_API_KEY, OPENAI_BASE_URL or --llm-base-url), "
                              f"so the offline default {OFFLINE_PROPOSER}: {PROPOSERS[OFFLINE_PROPOSER]} that uses "
                              f"the free FLOPs, params and latency, with no random warm-up")


def _chat_client(settings: SearchSettings, transcript: Transcript):
    if settings.replay:
        return ReplayClient(settings.replay, transcript)
    return ChatClient(settings.llm_model, settings.llm_base_url, temperature=settings.temperature,
                      timeout_s=settings.llm_timeout_s, max_retries=settings.llm_retries,
                      backoff_s=settings.llm_backoff_s, transcript=transcript, server=settings.llm_server,
                      context_tokens=settings.llm_context)


# Each proposer by its name; the LLM ones fall back to prior-bo for an iteration they cannot fill.
FACTORIES: dict[str, Callable[[SearchSettings, Transcript], object]] = {
    RandomProposer.name: lambda s, t: RandomProposer(s.seed),
    EvolutionProposer.name: lambda s, t: EvolutionProposer(s.seed),
    PriorGuidedProposer.name: lambda s, t: PriorGuidedProposer(s.seed),
    LLMProposer.name: lambda s, t: LLMProposer(_chat_client(s, t), s.prompt, fallback=PriorGuidedProposer(s.seed)),
    LLMRankProposer.name: lambda s, t: LLMRankProposer(_chat_client(s, t), seed=s.seed,
                                                       fallback=PriorGuidedProposer(s.seed)),
}


def make_proposer(name: str, settings: SearchSettings, transcript: Transcript):
    """The proposer ``name`` (one of pathnas.settings.PROPOSERS other than auto) for these settings."""
    return FACTORIES[name](settings, transcript)
