"""Model prices for step costs, from the maintained `genai-prices` table.

A lookup in that table is slow next to the ingest rate (~0.1 ms a call), so
the library is asked only a few times per (model, provider, price tier) and
its answer kept as a line. Within a tier a call's price is linear in its
tokens (input tokens * rate + output tokens * rate + any per-call fee); a
tier is chosen by the input tokens ("cliff" pricing: past a threshold the
whole call pays the tier's rates). So three library prices pin the line,
and every later call is two multiplications and an addition, equal to what
the library would answer. An unknown model has no cost (None), never zero.
"""

from __future__ import annotations

import bisect
import functools

from genai_prices import Usage, calc_price
from genai_prices.types import ModelPrice, TieredPrices

# Token counts used to pin a tier's line: far from any threshold's edge.
_STEP = 1_000


@functools.lru_cache(maxsize=4096)
def _model_price(model: str, provider: str) -> ModelPrice | None:
    # Providers name themselves in many ways (`openai`, `openai.chat`,
    # `function` for a test model); when ours is unknown, match by model alone.
    for provider_id in (provider or None, None):
        try:
            return calc_price(
                Usage(input_tokens=0, output_tokens=0), model, provider_id=provider_id
            ).model_price
        except LookupError:
            continue
    return None


@functools.lru_cache(maxsize=4096)
def _thresholds(model: str, provider: str) -> tuple[int, ...]:
    """Input-token counts past which a tier's rates apply, ascending."""
    found = _model_price(model, provider)
    prices = (getattr(found, name, None) for name in ("input_mtok", "output_mtok"))
    starts = {tier.start for p in prices if isinstance(p, TieredPrices) for tier in p.tiers}
    return tuple(sorted(starts))


@functools.lru_cache(maxsize=16384)
def _line(model: str, provider: str, tier: int) -> tuple[float, float, float]:
    """(per input token, per output token, per call) in USD within one tier."""
    found = _model_price(model, provider)
    assert found is not None
    starts = _thresholds(model, provider)
    first = starts[tier - 1] + 1 if tier else 0  # the tier's first input-token count

    def cost(input_tokens: int, output_tokens: int) -> float:
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        return float(found.calc_price(usage)["total_price"])

    base = cost(first, 0)
    per_input = (cost(first + _STEP, 0) - base) / _STEP
    per_output = (cost(first, _STEP) - base) / _STEP
    return per_input, per_output, base - per_input * first


def price(model: str, provider: str, input_tokens: int, output_tokens: int) -> float | None:
    """Cost in USD of one call, or None for a model the price table does not know."""
    if _model_price(model, provider) is None:
        return None
    tier = bisect.bisect_left(_thresholds(model, provider), input_tokens)
    per_input, per_output, per_call = _line(model, provider, tier)
    return input_tokens * per_input + output_tokens * per_output + per_call
