"""Per-token prices per served model, in USD per million tokens."""

from __future__ import annotations

from dataclasses import dataclass

from kimiserve.domain.types import Usage


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float
    cached_input_per_million: float

    def cost(self, usage: Usage) -> float:
        """USD for one generation: uncached input, cached input and output (reasoning included)."""
        uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
        micro = (
            uncached * self.input_per_million
            + usage.cached_tokens * self.cached_input_per_million
            + usage.completion_tokens * self.output_per_million
        )
        return round(micro / 1_000_000, 10)


FREE = Price(0.0, 0.0, 0.0)
