"""Base pieces of the market config models: the strict base model and the per-regime value tables.

One job: the building blocks that :mod:`defialloc.envs.market.config` and :mod:`defialloc.envs.market.drift_config` both
use (kept apart so that the drift models can live in their own module without an import cycle). They
are re-exported by :mod:`defialloc.envs.market.config`.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

REGIME_NAMES: tuple[str, ...] = ("calm", "bull", "crash")


class StrictModel(BaseModel):
    """Unknown keys fail (naming the key); assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RegimeValues(StrictModel):
    """One number per regime (finite, any sign)."""

    calm: float = Field(allow_inf_nan=False)
    bull: float = Field(allow_inf_nan=False)
    crash: float = Field(allow_inf_nan=False)

    def array(self) -> np.ndarray:
        """``(3,)`` float64 in ``REGIME_NAMES`` order."""
        return np.array([self.calm, self.bull, self.crash], dtype=np.float64)


class PositiveRegimeValues(RegimeValues):
    calm: float = Field(gt=0.0, allow_inf_nan=False)
    bull: float = Field(gt=0.0, allow_inf_nan=False)
    crash: float = Field(gt=0.0, allow_inf_nan=False)


class RateRegimeValues(RegimeValues):
    """Event intensities per year (>= 0, at most one event a day on average)."""

    calm: float = Field(ge=0.0, le=365.0)
    bull: float = Field(ge=0.0, le=365.0)
    crash: float = Field(ge=0.0, le=365.0)


class ProbabilityRegimeValues(RegimeValues):
    calm: float = Field(ge=0.0, le=1.0)
    bull: float = Field(ge=0.0, le=1.0)
    crash: float = Field(ge=0.0, le=1.0)
