"""Per-token prices per served model, and costs, in integer micro-USD.

A price is micro-USD per million tokens (Kimi K2.6's $0.48 / 1M input tokens is 480_000), so a
cost is an integer division with no float anywhere: settled costs round half up, worst-case
holds round up.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from kimiserve.domain.types import Usage

MICROS_PER_USD = 1_000_000
_MILLION = 1_000_000


def usd_to_micros(usd: float | str | Decimal) -> int:
    """USD as given by a person (settings, CLI) → micro-USD, exactly as written (no float error)."""
    return int((Decimal(str(usd)) * MICROS_PER_USD).to_integral_value(ROUND_HALF_UP))


def micros_to_usd(micros: int) -> float:
    """For display on the wire only (Runware `cost`); never stored or summed."""
    return micros / MICROS_PER_USD


@dataclass(frozen=True)
class Price:
    input_micros_per_million: int
    output_micros_per_million: int
    cached_micros_per_million: int

    @classmethod
    def from_usd(cls, input_usd: float, output_usd: float, cached_usd: float) -> Price:
        """From USD per million tokens."""
        return cls(usd_to_micros(input_usd), usd_to_micros(output_usd), usd_to_micros(cached_usd))

    def cost(self, usage: Usage) -> int:
        """Micro-USD for one generation: uncached input, cached input and output (reasoning included)."""
        uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        scaled = (
            uncached * self.input_micros_per_million
            + cached * self.cached_micros_per_million
            + usage.completion_tokens * self.output_micros_per_million
        )
        return (2 * scaled + _MILLION) // (2 * _MILLION)  # half up

    def worst_case(self, prompt_tokens: int, max_tokens: int) -> int:
        """The most one generation can cost: the whole prompt uncached, every token produced."""
        scaled = prompt_tokens * self.input_micros_per_million + max_tokens * self.output_micros_per_million
        return -(-scaled // _MILLION)  # up

    @property
    def free(self) -> bool:
        return not (self.input_micros_per_million or self.output_micros_per_million)


FREE = Price(0, 0, 0)
