"""How the search writes figures for people and for LLM prompts: significant digits, not fixed decimals.

A fixed ``.3f`` prints two latencies of 0.0099 and 0.0096 ms both as 0.010; three significant
digits keep them apart and still print 25.7 ms or 1234 ms plainly (never in exponent form).
"""
from __future__ import annotations

import math


def sig(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, positional, trailing zeros dropped."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def ms(latency_ms: float, is_estimate: bool = False) -> str:
    """A latency as people should read it: estimates say so."""
    return f"~{sig(latency_ms)} ms (roofline estimate)" if is_estimate else f"{sig(latency_ms)} ms"


def mflops(flops: float) -> str:
    return sig(flops / 1e6)


def mparams(params: float) -> str:
    return sig(params / 1e6)
