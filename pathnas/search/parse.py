"""Reading an LLM reply (or a server's response body) as data (the paper's Algorithm 2, done strictly).

Nothing is evaluated or executed. JSON objects are located by decoding at every ``{`` of the
text with the standard decoder (so a brace inside a string is just a character), under
bounds that make a hostile reply cheap to refuse: its length, its nesting depth and the
digits of any integer. When a reply holds several objects with the expected field, the last
one is used (an answer that revises itself ends with its final choice) and a note says so.
Values are mapped as values, never as indices (the reference code's kernel mapping was off
by one). Every failure raises ProposalError with a message precise enough to send back.
"""
from __future__ import annotations

import json

from pathnas.spaces import Architecture, ArchitectureError, SearchSpace

MAX_REPLY_CHARS = 100_000  # a proposal is a few hundred characters; a verbose one a few thousand
MAX_DEPTH = 64  # brackets nested deeper than this are refused before any decoding
MAX_INT_DIGITS = 30  # larger integers are no option value, token count or index
MAX_OBJECTS = 1000
MAX_VALUE_CHARS = 64  # an option value is a short number or word


class ProposalError(ValueError):
    """A reply that does not hold a valid architecture; the message says why."""


class JSONProblem(ValueError):
    """Text that is not acceptable JSON; the message says precisely why."""


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise JSONProblem(f"it holds an integer of {digits:,} digits (at most {MAX_INT_DIGITS} are read)")
    return int(text)


_DECODER = json.JSONDecoder(parse_int=_bounded_int)


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting in ``text`` (strings not told apart: a cheap, safe upper bound)."""
    depth = deepest = 0
    for ch in text:
        if ch in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "}]" and depth:
            depth -= 1
    return deepest


def _check_size(text: str, what: str, max_chars: int = MAX_REPLY_CHARS) -> None:
    depth = nesting_depth(text[: 10 * max_chars])  # the depth is the more telling reason; bounded work
    if depth > MAX_DEPTH:
        raise JSONProblem(f"{what} nests brackets {depth:,} deep (at most {MAX_DEPTH} are read)")
    if len(text) > max_chars:
        raise JSONProblem(f"{what} is {len(text):,} characters long (at most {max_chars:,} are read)")


def strict_loads(text: str, what: str = "the text", max_chars: int = MAX_REPLY_CHARS):
    """``json.loads`` of a whole document (a server's response) within the length and integer bounds;
    JSONProblem with the precise reason otherwise. Its strings may hold any brackets: the decoder's own
    recursion limit is what refuses deep nesting here."""
    if len(text) > max_chars:
        raise JSONProblem(f"{what} is {len(text):,} characters long (at most {max_chars:,} are read)")
    try:
        return _DECODER.decode(text)
    except JSONProblem as err:
        raise JSONProblem(f"{what}: {err}") from None
    except json.JSONDecodeError as err:
        raise JSONProblem(f"{what} is not valid JSON ({err})") from None
    except RecursionError:
        raise JSONProblem(f"{what} nests JSON too deeply to be read (more than Python's recursion limit)") from None


def schema_problem(text: str, schema: dict) -> str | None:
    """Why a reply does not follow the JSON schema the server was asked to enforce, or None when it does.

    A server that enforces the schema sends the JSON document alone; prose or a fenced block around it,
    a missing field or a value outside the schema's enums means the server answered 200 without
    enforcing it (several do), so the reply counts as unusable."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    try:
        _check_size(text, "the reply")
        value = strict_loads(text.strip(), "the reply")
    except JSONProblem as err:
        return str(err)
    error = best_match(Draft202012Validator(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path))
    message = " ".join(error.message.split())
    message = message if len(message) <= 200 else f"{message[:200]}..."
    return f"at {where}: {message}" if where else message


def json_objects(text: str) -> tuple[list[tuple[int, dict]], str | None]:
    """Every JSON object in the text (position, value), outermost only, and the first decoding error."""
    try:
        _check_size(text, "the reply")
    except JSONProblem as err:
        raise ProposalError(str(err)) from None
    found: list[tuple[int, dict]] = []
    first_error = None
    start = text.find("{")
    while start != -1 and len(found) < MAX_OBJECTS:
        try:
            value, end = _DECODER.raw_decode(text, start)
        except JSONProblem as err:
            raise ProposalError(f"the reply's JSON at character {start}: {err}") from None
        except json.JSONDecodeError as err:
            first_error = first_error or str(err)
            start = text.find("{", start + 1)
            continue
        except RecursionError:
            raise ProposalError("the reply nests JSON too deeply") from None
        if isinstance(value, dict):
            found.append((start, value))
            start = text.find("{", end)
        else:
            start = text.find("{", start + 1)
    return found, first_error


def extract_json(text: str, fields: tuple[str, ...] = (), notes: list[str] | None = None) -> dict:
    """The JSON object of the reply: the last one holding one of ``fields`` (any object if none given).

    When several qualify, ``notes`` gets a line saying which one was used.
    """
    found, error = json_objects(text)
    if not found:
        if error:
            raise ProposalError(f"the reply's JSON does not parse ({error})")
        raise ProposalError("the reply holds no JSON object")
    usable = [(pos, obj) for pos, obj in found if not fields or any(f in obj for f in fields)]
    if not usable:
        names = " or ".join(f'"{f}"' for f in fields)
        raise ProposalError(f"the JSON has no {names} field")
    if len(usable) > 1 and notes is not None:
        differ = len({json.dumps(obj, sort_keys=True) for _, obj in usable}) > 1
        notes.append(f"the reply holds {len(usable)} JSON objects{' that differ' if differ else ''}; used the last "
                     f"one (at character {usable[-1][0]})")
    return usable[-1][1]


def _normalise(position: int, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ProposalError(f"position {position}: {type(value).__name__} {str(value)[:40]!r} is not an option value")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip().strip("'\"").lower()
    if len(text) > MAX_VALUE_CHARS:
        raise ProposalError(f"position {position}: a value of {len(text):,} characters is not an option value")
    return text


def parse_proposal(text: str, space: SearchSpace, notes: list[str] | None = None) -> Architecture:
    """The architecture in ``{"configuration": [...]}`` (a list of values, or a compact code string)."""
    obj = extract_json(text, ("configuration", "architecture"), notes)
    config = obj.get("configuration", obj.get("architecture"))
    try:
        if isinstance(config, str):
            if len(config) > MAX_VALUE_CHARS * len(space):
                raise ProposalError(f'"configuration" is a string of {len(config):,} characters')
            return space.parse(config)
        if isinstance(config, dict) and isinstance(config.get("code"), str):
            return space.decode(config["code"][: 4 * len(space)])
        if not isinstance(config, list):
            raise ProposalError('"configuration" must be a list of option values')
        if len(config) != len(space):
            raise ProposalError(f"{space.name}: an architecture has {len(space)} decisions, got {len(config)}")
        return space.from_values([_normalise(i, v) for i, v in enumerate(config)])
    except ArchitectureError as err:
        raise ProposalError(str(err)) from None


def ncode(arch: Architecture, space: SearchSpace) -> str:
    """LM-Searcher's NCode: the index of the chosen option per decision ('-' where it does not apply)."""
    return "".join("-" if v is None else str(d.values.index(v)) for d, v in zip(space.decisions, arch.values))


def parse_choice(text: str, space: SearchSpace, candidates: list[Architecture], notes: list[str] | None = None
                 ) -> Architecture:
    """The candidate an ``llm-rank`` reply picked, by NCode (or compact code, or 1-based index)."""
    choice = extract_json(text, ("choice",), notes).get("choice")
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
    shown = repr(choice)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ProposalError(f'"choice" must be the NCode of one of the {len(candidates)} candidates; got {shown}')
