"""Costs are what the genai-prices table says, at any token count, flat or tiered."""

from __future__ import annotations

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from tracehouse.collector.pricing import price

# Flat prices, and tiered ones whose thresholds (128k, 200k, 272k input tokens) decide
# the whole call's rates.
MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("gemini-2.5-pro", "google"),
    ("gemini-1.5-pro", "google"),
]
EDGES = [0, 1, 127_999, 128_000, 128_001, 199_999, 200_000, 200_001, 272_000, 272_001]


@pytest.mark.parametrize(("model", "provider"), MODELS)
@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    input_tokens=st.one_of(st.sampled_from(EDGES), st.integers(0, 2_000_000)),
    output_tokens=st.integers(0, 200_000),
)
def test_cost_equals_the_price_table(
    model: str, provider: str, input_tokens: int, output_tokens: int
) -> None:
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    expected = float(calc_price(usage, model, provider_id=provider).total_price)
    assert price(model, provider, input_tokens, output_tokens) == pytest.approx(expected, rel=1e-9)


def test_an_unknown_model_has_no_cost() -> None:
    assert price("no-such-model-anywhere", "nobody", 10, 10) is None
