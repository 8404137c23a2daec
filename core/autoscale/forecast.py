"""Next-interval load: additive Holt-Winters with daily seasonality, EWMA on short history.

Pure numpy and Python: no I/O, no clock. A forecaster is a small online state: ``update`` folds in
one interval's observed load (items/s), ``predict(horizon)`` gives the mean and an upper quantile
for the next ``horizon`` intervals. The autoscaler sizes capacity from the upper quantile.

Seasonal model (additive Holt-Winters; Hyndman & Athanasopoulos, *Forecasting: Principles and
Practice*, 3rd ed., section 8.3)::

    level_t  = a (y_t - s_{t-m}) + (1 - a)(level_{t-1} + trend_{t-1})
    trend_t  = b (level_t - level_{t-1}) + (1 - b) trend_{t-1}
    s_t      = g (y_t - level_t) + (1 - g) s_{t-m}
    yhat_{t+h} = level_t + h trend_t + s_{t+h-m}

``m`` is the season in intervals (1440 one-minute intervals a day). It needs two whole seasons:
the first seeds the seasonal profile (the mean of the whole seasons' deviations from their own
means, smoothed by a circular moving average of ``m / 96`` intervals, 15 minutes a day, so one
noisy minute does not become a permanent spike), the rest re-learn it. The smoothing weights are
chosen by a small grid search minimising one-step squared error on the history.

With less than two seasons the forecaster is an EWMA of the level (``a`` = 0.3): flat forecasts
that follow the load with a lag, which the headroom must cover.

Upper quantile (headroom): the empirical ``q``-quantile of the last season's one-step errors
(``y - yhat``; bursts included, so they widen it), added to the mean and grown with the horizon as
simple exponential smoothing's forecast variance grows, ``sqrt(1 + (h - 1) a^2)`` (same book,
table 8.8). Below ten errors there is nothing to take a quantile of: the upper bound is then the
larger of 1.5 x the level and the largest of the last ten observations.

Measured error: on a noisy diurnal series (mean 1000, amplitude 60%, 5% Gaussian noise, one-minute
intervals, two days of history) the rolling one-step forecast of day three has a MAPE under 10%
(``tests/unit/test_forecast.py``).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

__all__ = ["Ewma", "Forecast", "Forecaster", "HoltWinters", "forecaster_for"]

_MIN_ERRORS = 10  # below this, no quantile is taken from the errors
_GRID_ALPHA = (0.1, 0.3, 0.6)
_GRID_BETA = (0.0, 0.01)
_GRID_GAMMA = (0.05, 0.2, 0.5)


@dataclass(frozen=True, slots=True)
class Forecast:
    """Load for the next ``len(mean)`` intervals: interval ``k`` starts ``k`` intervals from now.

    Attributes:
        mean: expected items/s per interval, never negative.
        upper: the ``quantile`` upper bound per interval, at least ``mean``.
        method: which model produced it.
    """

    mean: np.ndarray
    upper: np.ndarray
    method: Literal["holt_winters", "ewma"]
    quantile: float


class Forecaster(Protocol):
    """An online forecaster: fold in observations one interval at a time, then predict."""

    def update(self, y: float) -> object:
        """Fold in one interval's observed load (items/s); callers ignore what it returns."""
        ...

    def predict(self, horizon: int, quantile: float = 0.95) -> Forecast: ...


class _Errors:
    """The last ``window`` one-step errors and the quantile-based upper bound they give."""

    def __init__(self, window: int) -> None:
        self.errors: deque[float] = deque(maxlen=max(window, _MIN_ERRORS))

    def upper(
        self, mean: np.ndarray, alpha: float, quantile: float, recent: Sequence[float]
    ) -> np.ndarray:
        h = np.arange(1, len(mean) + 1)
        if len(self.errors) < _MIN_ERRORS:
            fallback = max([1.5 * float(mean[0]), *recent[-_MIN_ERRORS:]])
            floored: np.ndarray = np.maximum(mean, fallback)
            return floored
        q = max(float(np.quantile(np.fromiter(self.errors, float), quantile)), 0.0)
        widened: np.ndarray = mean + q * np.sqrt(1 + (h - 1) * alpha**2)
        return widened


class Ewma:
    """Flat forecasts from an exponentially weighted level: the short-history fallback."""

    def __init__(self, alpha: float = 0.3, window: int = 1440) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.level: float | None = None
        self._errors = _Errors(window)
        self._recent: deque[float] = deque(maxlen=_MIN_ERRORS)

    def update(self, y: float) -> None:
        if self.level is None:
            self.level = float(y)
        else:
            self._errors.errors.append(y - self.level)
            self.level += self.alpha * (y - self.level)
        self._recent.append(float(y))

    def predict(self, horizon: int, quantile: float = 0.95) -> Forecast:
        mean = np.full(horizon, max(self.level or 0.0, 0.0))
        upper = self._errors.upper(mean, self.alpha, quantile, list(self._recent))
        return Forecast(mean, upper, "ewma", quantile)


class HoltWinters:
    """Additive Holt-Winters state; build it with ``fit`` from at least two seasons."""

    def __init__(
        self, level: float, trend: float, seasonal: np.ndarray, alpha: float, beta: float,
        gamma: float,
    ) -> None:  # fmt: skip
        self.level, self.trend = level, trend
        self.seasonal = np.array(seasonal, float)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.m = len(self.seasonal)
        self.t = 0  # index of the next observation
        self._errors = _Errors(self.m)
        self._recent: deque[float] = deque(maxlen=_MIN_ERRORS)

    @staticmethod
    def initial(y: np.ndarray, m: int) -> tuple[float, float, np.ndarray]:
        """Level, trend and smoothed seasonal profile from the whole seasons of ``y``."""
        seasons = y[: (len(y) // m) * m].reshape(-1, m)
        means = seasons.mean(axis=1)
        profile = (seasons - means[:, None]).mean(axis=0)
        w = max(1, m // 96)
        if w > 1:  # circular moving average: the profile wraps from midnight to midnight
            padded = np.concatenate([profile[-(w // 2) :], profile, profile[: w - 1 - w // 2]])
            profile = np.convolve(padded, np.ones(w) / w, mode="valid")
        trend = float((means[-1] - means[0]) / (m * (len(means) - 1))) if len(means) > 1 else 0.0
        return float(means[0]), trend, profile - profile.mean()

    @classmethod
    def fit(cls, y: Sequence[float] | np.ndarray, m: int) -> HoltWinters:
        """The best (one-step squared error) of a small grid of smoothing weights, run over
        ``y``; the returned state has seen all of ``y``.

        Raises:
            ValueError: fewer than two seasons of data.
        """
        arr = np.asarray(y, float)
        if m < 2 or len(arr) < 2 * m:
            raise ValueError(f"Holt-Winters needs two seasons ({2 * m} points), got {len(arr)}")
        level, trend, seasonal = cls.initial(arr, m)
        best: tuple[float, HoltWinters] | None = None
        for a, b, g in itertools.product(_GRID_ALPHA, _GRID_BETA, _GRID_GAMMA):
            model = cls(level, trend, seasonal, a, b, g)
            sse = model.run(arr)
            if best is None or sse < best[0]:
                best = (sse, model)
        assert best is not None
        return best[1]

    def run(self, y: np.ndarray) -> float:
        """Fold in every observation; the sum of squared one-step errors after the first season
        (the burn-in, while the profile is still the seed's)."""
        sse = 0.0
        for value in y:
            err = self.update(float(value))
            if self.t > self.m:
                sse += err * err
        return sse

    def update(self, y: float) -> float:
        """Fold in one observation; returns its one-step error."""
        i = self.t % self.m
        s = float(self.seasonal[i])
        err = y - (self.level + self.trend + s)
        level = self.alpha * (y - s) + (1 - self.alpha) * (self.level + self.trend)
        self.trend = self.beta * (level - self.level) + (1 - self.beta) * self.trend
        self.level = level
        self.seasonal[i] = self.gamma * (y - level) + (1 - self.gamma) * s
        self.t += 1
        if self.t > self.m:
            self._errors.errors.append(err)
        self._recent.append(y)
        return err

    def predict(self, horizon: int, quantile: float = 0.95) -> Forecast:
        h = np.arange(1, horizon + 1)
        season = self.seasonal[(self.t + h - 1) % self.m]
        mean = np.maximum(self.level + h * self.trend + season, 0.0)
        upper = self._errors.upper(mean, self.alpha, quantile, list(self._recent))
        return Forecast(mean, np.maximum(upper, mean), "holt_winters", quantile)


def forecaster_for(history: Sequence[float] | np.ndarray, season: int) -> Forecaster:
    """Holt-Winters fitted on ``history`` when it holds two seasons, else an EWMA over it.

    NaN intervals (no record) count as zero load: the front door records every request, so a
    missing interval is one with no traffic.
    """
    y = np.nan_to_num(np.asarray(history, float), nan=0.0)
    if season >= 2 and len(y) >= 2 * season:
        return HoltWinters.fit(y, season)
    model = Ewma(window=max(season, _MIN_ERRORS))
    for value in y:
        model.update(float(value))
    return model


def horizon_for(lead_s: float, interval_s: float) -> int:
    """Intervals to forecast so the one that starts after ``now + lead_s`` is included."""
    return math.ceil(lead_s / interval_s) + 1
