"""Hardware-aware architecture search: the loop, the proposers (LLM, LLM-rank, prior-bo, evolution, random),
on a pretrained supernet or a tabular benchmark."""
from pathnas.settings import PROPOSERS, SearchSettings

from .bo import PriorGuidedProposer
from .latency import LatencyFactory, LatencyModel
from .llm import ChatClient, LLMUnavailable, ReplayClient, Transcript
from .factory import FACTORIES, choose_proposer, make_proposer
from .loop import Budgets, Search, SearchStopped, best_of, open_target, pareto_front, run_search
from .parse import ProposalError, extract_json, ncode, parse_choice, parse_proposal
from .proposers import EvolutionProposer, LLMProposer, LLMRankProposer, NoProposal, RandomProposer, SearchContext
from .runfile import SearchMismatchError, read_evaluations

__all__ = [
    "PriorGuidedProposer", "LatencyFactory", "LatencyModel", "ChatClient", "LLMUnavailable", "ReplayClient",
    "Transcript", "Budgets", "Search", "SearchStopped", "best_of", "choose_proposer", "open_target", "pareto_front",
    "run_search", "ProposalError", "extract_json", "ncode", "parse_choice", "parse_proposal", "EvolutionProposer",
    "LLMProposer", "LLMRankProposer", "NoProposal", "RandomProposer", "SearchContext", "SearchMismatchError",
    "read_evaluations", "PROPOSERS", "SearchSettings", "FACTORIES", "make_proposer",
]
