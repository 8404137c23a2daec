"""Next-interval load, from the model that forecast this series best in a rolling backtest.

Pure: no I/O, no clock. A ``Forecaster`` folds in one interval's observed load (items/s) at a
time and predicts the next ones; the autoscaler sizes capacity from the prediction and its errors.

Candidates, each a fit from the history to a path of the next intervals:

- ``naive``: the last observation, held flat; and ``ewma``: an exponentially weighted level.
- ``seasonal_naive[m]``: the last season of ``m`` intervals, at the same phase; and
  ``seasonal_median[m]``: the median of the last (up to three) seasons at the same phase, which
  keeps a one-off spike out of the next season while a timer that fires every hour stays in.
  One season of history is enough for either.
- ``holt_winters[m]``: additive Holt-Winters (statsmodels ``ExponentialSmoothing``, heuristic
  initialisation, smoothing weights fitted by statsmodels); needs two seasons.
- ``mstl``: every season the history holds twice at once (statsmodels ``MSTL``: minute of the hour
  for timers and cron jobs, hour of the day, day of the week), each component repeating its last
  cycle on top of the trend's last value.

The seasons are an hour, a day and a week in intervals (those of at least two intervals). The
statsmodels candidates are tried when statsmodels is installed (``gpufan[forecast]``); without it
the report says they were not.

Every ``refit_every`` intervals (an hour) each candidate is refit on the history and forecasts
a path to the next refit (a candidate whose history has just become long enough starts at once);
between refits an exponentially weighted level correction of the path's errors (weight ``0.3``;
``1`` for ``naive``, whose forecast is then always the last observation) follows level shifts.
Every candidate's forecast for each interval up to ``lead`` ahead (the planner's cold-start
window) is scored when the load arrives: that is the rolling backtest. At the lead it is scored
twice: the mean absolute error of its mean, and the pinball
(quantile) loss of its upper quantile (its mean plus the quantile of its own recent errors), which
rewards an upper bound that is both tight and rarely exceeded - what the capacity bought from it
depends on. The candidate with the smallest pinball loss over the last ``window`` scored
forecasts is the one used, and its own recent errors - at the lead, and at each nearer
horizon - give the upper quantile and the error samples the planner sizes headroom from.
``forecaster_for`` replays the history through this process, so a forecaster built from a store
of past days has already been backtested on them.

With fewer than ``_MIN_ERRORS`` scored forecasts there are no errors to take a quantile of: the
upper bound is then the larger of 1.5 x the mean and the largest of the last ten observations.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Forecast", "Forecaster", "forecaster_for", "horizon_for", "seasons_for"]

_MIN_ERRORS = 10  # below this, no quantile is taken from the errors
_CORRECTION = 0.3  # weight of the newest path error in the level correction
_NAIVE_SEASONS = 3  # seasonal median: of up to this many past seasons
_FIT_SEASONS = 4  # statsmodels fits see at most this many of their longest season
# STL's loess is evaluated at every 10th point and interpolated between (its own speed-up), and
# MSTL refines its seasons once instead of twice: a day-and-hour MSTL of 4,320 one-minute points
# takes 0.4 s instead of 9 s, its components within a fifth of their spread of the full fit's.
_STL_JUMP = 10

Fit = Callable[[np.ndarray, int], np.ndarray]  # (history, span) -> path of ``span`` intervals


@dataclass(frozen=True, slots=True)
class Forecast:
    """Load for the next ``len(mean)`` intervals: interval ``k`` starts ``k`` intervals from now.

    Attributes:
        mean: expected items/s per interval, never negative.
        upper: the ``quantile`` upper bound per interval, at least ``mean``.
        errors: the chosen model's recent errors (observed - forecast) at the lead horizon:
            the distribution the planner sizes headroom from; empty before any was scored.
        errors_by_horizon: its recent errors 1, 2, ... intervals ahead, for each interval of
            ``mean`` up to the lead (the last is ``errors``): a nearer interval is known better.
        method: the candidate that produced it.
        backtest_mae: each scored candidate's mean absolute error at the lead horizon (items/s)
            over the backtest window.
        backtest_loss: each candidate's mean pinball loss of its upper-quantile forecast at the
            lead horizon over the same window: what chose ``method``.
        untried: candidates that could not be tried, and why.
    """

    mean: np.ndarray
    upper: np.ndarray
    errors: np.ndarray
    method: str
    quantile: float
    backtest_mae: dict[str, float] = field(default_factory=dict)
    backtest_loss: dict[str, float] = field(default_factory=dict)
    untried: tuple[str, ...] = ()
    errors_by_horizon: tuple[np.ndarray, ...] = ()


def seasons_for(interval_s: float) -> tuple[int, ...]:
    """An hour, a day and a week in intervals of ``interval_s``: those of two intervals or more."""
    return tuple(n for s in (3600.0, 86400.0, 604800.0) if (n := round(s / interval_s)) >= 2)


def horizon_for(lead_s: float, interval_s: float) -> int:
    """Intervals to forecast so the one that starts after ``now + lead_s`` is included."""
    return math.ceil(lead_s / interval_s) + 1


def _naive(y: np.ndarray, span: int) -> np.ndarray:
    return np.full(span, y[-1])


def _seasonal_naive(m: int, seasons: int) -> Fit:
    def fit(y: np.ndarray, span: int) -> np.ndarray:
        n = len(y)
        target = n + np.arange(span)
        k = min(seasons, n // m)
        # phase j seasons back, wrapped forward so a path longer than a season repeats it
        lags = target[None, :] - m * np.arange(1, k + 1)[:, None]
        lags = np.where(lags >= n, lags - m * ((lags - n) // m + 1), lags)
        median: np.ndarray = np.median(y[lags], axis=0)
        return median

    return fit


def _whole_seasons(y: np.ndarray, m: int) -> np.ndarray:
    """The last whole seasons of ``y``, at most ``_FIT_SEASONS``: the heuristic initialisation
    reads whole seasons."""
    return y[len(y) - m * min(_FIT_SEASONS, len(y) // m) :]


def _holt_winters(m: int) -> Fit:
    def fit(y: np.ndarray, span: int) -> np.ndarray:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        recent = _whole_seasons(y, m)
        model = ExponentialSmoothing(
            recent, seasonal="add", seasonal_periods=m, initialization_method="heuristic"
        )
        path: np.ndarray = np.asarray(model.fit().forecast(span), float)
        return path

    return fit


def _mstl(periods: tuple[int, ...]) -> Fit:
    def fit(y: np.ndarray, span: int) -> np.ndarray:
        from statsmodels.tsa.seasonal import MSTL

        recent = y[-_FIT_SEASONS * max(periods) :]
        jumps = {f"{k}_jump": _STL_JUMP for k in ("seasonal", "trend", "low_pass")}
        result = MSTL(recent, periods=periods, iterate=1, stl_kwargs=jumps).fit()
        seasonal = np.asarray(result.seasonal, float).reshape(len(recent), -1)
        n, h = len(recent), np.arange(span)
        path = np.full(span, float(np.asarray(result.trend)[-1]))
        for j, p in enumerate(periods):
            path += seasonal[n - p + h % p, j]
        return path

    return fit


def _statsmodels_missing() -> bool:
    """Whether statsmodels is absent; asked without importing it (seconds) until a fit needs it."""
    return importlib.util.find_spec("statsmodels") is None


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    min_history: int
    fit: Fit
    correction: float = _CORRECTION  # 1: the path is re-levelled on each observation


def _specs(seasons: Sequence[int], with_statsmodels: bool) -> list[_Spec]:
    specs = [_Spec("naive", 1, _naive, correction=1.0), _Spec("ewma", 1, _naive)]
    specs += [_Spec(f"seasonal_naive[{m}]", m, _seasonal_naive(m, 1)) for m in seasons]
    specs += [
        _Spec(f"seasonal_median[{m}]", m, _seasonal_naive(m, _NAIVE_SEASONS)) for m in seasons
    ]
    if with_statsmodels:
        specs += [_Spec(f"holt_winters[{m}]", 2 * m, _holt_winters(m)) for m in seasons]
        for k in range(2, len(seasons) + 1):  # MSTL drops a season the fit does not hold twice
            periods = tuple(seasons[:k])
            name = f"mstl[{','.join(map(str, periods))}]"
            specs.append(_Spec(name, 2 * periods[-1] + 1, _mstl(periods)))
    return specs


class _Candidate:
    """One model's live path, level correction, pending forecasts and scored errors."""

    def __init__(self, spec: _Spec, lead: int, window: int, quantile: float) -> None:
        self.spec, self.lead, self.quantile = spec, lead, quantile
        self.path = np.zeros(0)
        self.start = 0  # history index of path[0]
        self.correction = 0.0
        # history index -> the forecasts made for it: (horizon, mean, upper quantile or NaN)
        self.waiting: dict[int, list[tuple[int, float, float]]] = {}
        # the errors of the forecasts 1 .. lead intervals ahead; the lead's are ``errors``
        self.by_horizon = [deque[float](maxlen=window) for _ in range(lead)]
        self.errors = self.by_horizon[-1]
        self.losses: deque[float] = deque(maxlen=window)  # pinball losses of the upper forecast

    def refit(self, y: np.ndarray, span: int) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # statsmodels' convergence chatter
            try:
                path = np.asarray(self.spec.fit(y, span), float)
            except (ValueError, np.linalg.LinAlgError):
                return False
        if path.shape != (span,) or not np.all(np.isfinite(path)):
            return False
        self.path, self.start, self.correction = np.maximum(path, 0.0), len(y), 0.0
        return True

    def at(self, t: int) -> float:
        i = min(max(t - self.start, 0), len(self.path) - 1)
        return max(float(self.path[i]) + self.correction, 0.0)

    def score(self, t: int, y: float) -> None:
        """Score the forecasts made for ``t`` and correct the level by the path's error."""
        for h, forecast, upper in self.waiting.pop(t, []):
            self.by_horizon[h - 1].append(y - forecast)
            if math.isfinite(upper):
                q, miss = self.quantile, y - upper
                self.losses.append(max(q * miss, (q - 1) * miss))
        if len(self.path):
            residual = y - float(self.path[min(t - self.start, len(self.path) - 1)])
            self.correction += self.spec.correction * (residual - self.correction)

    def ahead(self, t: int) -> None:
        """Forecast ``t + 1 .. t + lead``, to be scored when they arrive; the upper quantile
        (what the pinball loss scores) at the lead."""
        if len(self.path):
            scored = len(self.errors) >= _MIN_ERRORS
            for h in range(1, self.lead + 1):
                mean = self.at(t + h)
                upper = mean + self.margin() if h == self.lead and scored else math.nan
                self.waiting.setdefault(t + h, []).append((h, mean, upper))

    def margin(self) -> float:
        """The ``quantile`` of the recent errors: what the upper forecast adds to the mean."""
        return max(float(np.quantile(np.fromiter(self.errors, float), self.quantile)), 0.0)

    def mae(self) -> float:
        return float(np.mean(np.abs(np.fromiter(self.errors, float))))

    def pinball(self) -> float:
        return float(np.mean(np.fromiter(self.losses, float)))


class Forecaster:
    """The rolling backtest and the forecasts of the candidate that leads it (module docstring).

    Args:
        seasons: season lengths in intervals (``seasons_for``).
        lead: the horizon, in intervals after the last observation, that candidates are scored
            at: ``horizon_for(cold start, interval)``, the interval the planner provisions.
        refit_every: intervals between refits (and the path length).
        window: scored forecasts per candidate that the choice and the quantile look at.
        only: the candidates to try, by name (all when None): a baseline without the forecast.
        quantile: the upper quantile whose pinball loss ranks the candidates.
    """

    def __init__(
        self,
        seasons: Sequence[int],
        lead: int = 1,
        refit_every: int = 60,
        window: int = 1440,
        only: Sequence[str] | None = None,
        quantile: float = 0.95,
    ) -> None:
        if lead < 1 or refit_every < 1 or window < _MIN_ERRORS:
            raise ValueError(f"lead, refit_every >= 1 and window >= {_MIN_ERRORS} required")
        missing = _statsmodels_missing()
        self.untried = (
            ("holt_winters, mstl: statsmodels is not installed (gpufan[forecast])",)
            if missing else ()
        )  # fmt: skip
        specs = [s for s in _specs(seasons, not missing) if only is None or s.name in only]
        self.candidates = [_Candidate(s, lead, window, quantile) for s in specs]
        self.lead, self.refit_every = lead, refit_every
        self.y: list[float] = []
        self._since_refit = refit_every

    def update(self, y: float) -> None:
        """Fold in the next interval's observed load (items/s)."""
        t = len(self.y)
        value = float(y) if math.isfinite(y) else 0.0
        for c in self.candidates:
            c.score(t, value)
        self.y.append(value)
        self._since_refit += 1
        if self._since_refit >= self.refit_every:
            self._refit()
        else:  # a candidate whose history has just become long enough starts at once
            for c in self.candidates:
                if not len(c.path) and len(self.y) >= c.spec.min_history:
                    c.refit(np.asarray(self.y), self.refit_every - self._since_refit + c.lead + 1)
        for c in self.candidates:
            c.ahead(t)

    def _refit(self) -> None:
        y = np.asarray(self.y)
        span = self.refit_every + self.lead + 1
        for c in self.candidates:
            if len(y) >= c.spec.min_history:
                c.refit(y, span)
        self._since_refit = 0

    def chosen(self) -> _Candidate | None:
        """The fitted candidate with the smallest backtest loss (ties: the simpler, listed
        first); before any is scored, the richest fitted one."""
        fitted = [c for c in self.candidates if len(c.path)]
        scored = [c for c in fitted if len(c.losses) >= _MIN_ERRORS]
        if scored:
            return min(scored, key=lambda c: c.pinball())
        return fitted[-1] if fitted else None

    def predict(self, horizon: int, quantile: float = 0.95) -> Forecast:
        """Mean, upper quantile and error samples for the next ``horizon`` intervals."""
        t = len(self.y)
        best = self.chosen()
        recent = self.y[-_MIN_ERRORS:]
        if best is None:  # no observation yet
            zero = np.zeros(horizon)
            return Forecast(zero, zero, np.zeros(0), "none", quantile, untried=self.untried)
        mean = np.array([best.at(t + h) for h in range(horizon)])
        errors = np.fromiter(best.errors, float)
        by_horizon: tuple[np.ndarray, ...] = ()
        if len(errors) >= _MIN_ERRORS:
            upper = mean + max(float(np.quantile(errors, quantile)), 0.0)
            near = [np.fromiter(d, float) for d in best.by_horizon[:-1]]
            by_horizon = (*(e if len(e) >= _MIN_ERRORS else errors for e in near), errors)
        else:
            errors = np.zeros(0)
            upper = np.maximum(mean, max([1.5 * float(mean[0]), *recent]))
        mae = {c.spec.name: round(c.mae(), 3) for c in self.candidates if c.errors}
        loss = {c.spec.name: round(c.pinball(), 3) for c in self.candidates if c.losses}
        return Forecast(
            mean, upper, errors, best.spec.name, quantile, mae, loss, self.untried, by_horizon
        )


def forecaster_for(
    history: Iterable[float] | np.ndarray,
    interval_s: float,
    lead: int = 1,
    *,
    backtest: int = 1440,
    refit_every: int | None = None,
    only: Sequence[str] | None = None,
    quantile: float = 0.95,
) -> Forecaster:
    """A forecaster that has replayed the last ``backtest`` intervals of ``history`` (oldest
    first): its candidates are refit and scored through them, on all the history before each
    point. NaN intervals (no record) count as zero load: the front door records every request,
    so a missing interval is one with no traffic. ``quantile`` ranks the candidates
    (``Forecaster``)."""
    seasons = seasons_for(interval_s)
    every = refit_every or (seasons[0] if seasons else 1)
    model = Forecaster(seasons, lead=lead, refit_every=every, only=only, quantile=quantile)
    y = np.nan_to_num(np.asarray(list(history), float), nan=0.0)
    split = max(len(y) - backtest, 0)
    model.y = [float(v) for v in y[:split]]
    for value in y[split:]:
        model.update(float(value))
    return model
