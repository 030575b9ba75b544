"""Hardware-aware architecture search: the loop, the proposers (LLM, LLM-rank, evolution, random)."""
from .latency import LatencyFactory, LatencyModel
from .llm import ChatClient, LLMUnavailable, ReplayClient, Transcript
from .loop import PROPOSERS, SearchSettings, pareto_front, run_search
from .parse import ProposalError, extract_json, ncode, parse_choice, parse_proposal
from .proposers import EvolutionProposer, LLMProposer, LLMRankProposer, NoProposal, RandomProposer, SearchContext

__all__ = [
    "LatencyFactory", "LatencyModel", "ChatClient", "LLMUnavailable", "ReplayClient", "Transcript", "PROPOSERS", "SearchSettings", "pareto_front",
    "run_search", "ProposalError", "extract_json", "ncode", "parse_choice", "parse_proposal", "EvolutionProposer",
    "LLMProposer", "LLMRankProposer", "NoProposal", "RandomProposer", "SearchContext",
]
