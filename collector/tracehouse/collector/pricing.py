"""Model prices for step costs, from the maintained `genai-prices` table.

A lookup in that table is slow next to the ingest rate (~0.1 ms), so the
price of each (model, provider) is found once and kept; a flat per-token
price is then two multiplications. Tiered prices go through the library.
An unknown model has no cost (None), never a cost of zero.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from genai_prices import Usage, calc_price
from genai_prices.types import ModelPrice

_MTOK = 1_000_000


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


def price(model: str, provider: str, input_tokens: int, output_tokens: int) -> float | None:
    """Cost in USD of one call, or None for a model the price table does not know."""
    found = _model_price(model, provider)
    if found is None:
        return None
    per_input, per_output = found.input_mtok, found.output_mtok
    if isinstance(per_input, Decimal | None) and isinstance(per_output, Decimal | None):
        return (
            input_tokens * float(per_input or 0) + output_tokens * float(per_output or 0)
        ) / _MTOK
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return float(found.calc_price(usage)["total_price"])
