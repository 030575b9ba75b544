"""Reading an LLM reply as data (the paper's Algorithm 2, done strictly).

The reply is never evaluated or executed: JSON is located (fenced block, bare object, or an
object inside prose), parsed with ``json.loads`` and validated against the search space.
Values are mapped as values, never as indices (the reference code's kernel mapping was off
by one). Every failure raises ProposalError with a message precise enough to send back.
"""
from __future__ import annotations

import json
import re

from pathnas.spaces import Architecture, ArchitectureError, SearchSpace

FENCED = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


class ProposalError(ValueError):
    """A reply that does not hold a valid architecture; the message says why."""


def _json_candidates(text: str) -> list[str]:
    blocks = [m.group(1).strip() for m in FENCED.finditer(text)]
    # Balanced-brace scan for objects in prose (strings with braces are handled by json.loads failing).
    depth, start = 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0 and start is not None:
                blocks.append(text[start:i + 1])
    return blocks


def extract_json(text: str) -> dict:
    """The first JSON object in the reply (fenced, bare, or inside prose)."""
    errors = []
    for block in _json_candidates(text):
        try:
            value = json.loads(block)
        except json.JSONDecodeError as err:
            errors.append(str(err))
            continue
        if isinstance(value, dict):
            return value
    if errors:
        raise ProposalError(f"the reply's JSON does not parse ({errors[0]})")
    raise ProposalError("the reply holds no JSON object")


def _normalise(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        raise ProposalError(f"{value!r} is not an option value")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().strip("'\"").lower()


def parse_proposal(text: str, space: SearchSpace) -> Architecture:
    """The architecture in ``{"configuration": [...]}`` (a list of values, or a compact code string)."""
    obj = extract_json(text)
    config = obj.get("configuration", obj.get("architecture"))
    if config is None:
        raise ProposalError('the JSON has no "configuration" field')
    try:
        if isinstance(config, str):
            return space.parse(config)
        if isinstance(config, dict) and isinstance(config.get("code"), str):
            return space.decode(config["code"])
        if not isinstance(config, list):
            raise ProposalError('"configuration" must be a list of option values')
        return space.from_values([_normalise(v) for v in config])
    except ArchitectureError as err:
        raise ProposalError(str(err)) from None


def ncode(arch: Architecture, space: SearchSpace) -> str:
    """LM-Searcher's NCode: the index of the chosen option per decision ('-' where it does not apply)."""
    return "".join("-" if v is None else str(d.values.index(v)) for d, v in zip(space.decisions, arch.values))


def parse_choice(text: str, space: SearchSpace, candidates: list[Architecture]) -> Architecture:
    """The candidate an ``llm-rank`` reply picked, by NCode (or compact code, or 1-based index)."""
    obj = extract_json(text)
    choice = obj.get("choice")
    by_ncode = {ncode(a, space): a for a in candidates}
    by_code = {a.code: a for a in candidates}
    if isinstance(choice, int) and not isinstance(choice, bool) and 1 <= choice <= len(candidates):
        return candidates[choice - 1]
    if isinstance(choice, str):
        key = choice.strip()
        if key in by_ncode:
            return by_ncode[key]
        if key in by_code:
            return by_code[key]
    raise ProposalError(f'"choice" must be the NCode of one of the {len(candidates)} candidates; got {choice!r}')
