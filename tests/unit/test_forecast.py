"""Forecasts chosen and measured by their own rolling backtest (``core.autoscale.forecast``)."""

from __future__ import annotations

import numpy as np
import pytest

from core.autoscale.forecast import Forecaster, forecaster_for, horizon_for, seasons_for

DAY, HOUR = 1440, 60  # one-minute intervals


def diurnal(days: float, seed: int = 1, noise: float = 0.05) -> np.ndarray:
    """Mean 1000, amplitude 60%, Gaussian noise of ``noise`` relative to the level."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(days * DAY))
    clean = 1000 * (1 + 0.6 * np.sin(2 * np.pi * t / DAY))
    return clean * (1 + noise * rng.standard_normal(t.size))


def timers(hours: int, seed: int = 2) -> np.ndarray:
    """A flat 1000 with noise, and a timer that quadruples the load at minute 0 of every hour
    and doubles it every 15 minutes: what cron-driven serverless traffic looks like."""
    rng = np.random.default_rng(seed)
    t = np.arange(hours * HOUR)
    y = 1000 * (1 + 0.05 * rng.standard_normal(t.size))
    y[t % 15 == 0] *= 2
    y[t % 60 == 0] *= 2
    return y


def replay(model: Forecaster, held_out: np.ndarray, lead: int) -> tuple[np.ndarray, np.ndarray]:
    """Each held-out point's forecast made ``lead`` intervals ahead (mean and upper), the first
    ``lead - 1`` points (forecast before the hold-out began) left out."""
    means, uppers = [], []
    for value in held_out:
        f = model.predict(lead)  # f.mean[-1] is for the point lead - 1 after this one
        means.append(f.mean[-1])
        uppers.append(f.upper[-1])
        model.update(float(value))
    n = len(held_out) - (lead - 1)
    return np.array(means[:n]), np.array(uppers[:n])


def test_seasons_are_the_hour_day_and_week_that_fit_the_interval() -> None:
    assert seasons_for(60) == (60, 1440, 10080)
    assert seasons_for(3600) == (24, 168)  # an hour is one interval: no hourly season
    assert horizon_for(150, 60) == 4


def test_timers_are_learned_online_and_chosen_over_the_naive_forecast() -> None:
    # GIVEN six hours of timer-driven load and no history before it, WHEN it is replayed,
    # THEN a seasonal candidate leads the backtest, and its held-out error is well below naive's
    y = timers(8)
    lead = 3
    model = forecaster_for(y[: 6 * HOUR], 60.0, lead)
    f = model.predict(lead)
    assert f.method.startswith(("seasonal", "holt_winters"))
    assert f.backtest_loss[f.method] == min(f.backtest_loss.values())
    assert f.backtest_mae[f.method] < 0.5 * f.backtest_mae["naive"]
    mean, upper = replay(model, y[6 * HOUR :], lead)
    actual = y[6 * HOUR + lead - 1 :]
    # the forecast for minute 0 sees the timer coming: well above the flat level
    on_the_hour = (np.arange(len(actual)) + lead - 1) % 60 == 0
    assert np.all(mean[on_the_hour] > 2.5 * 1000)
    assert float(np.mean(np.abs(mean - actual) / actual)) < 0.1
    assert np.mean(upper >= actual) > 0.85  # the 95% upper bound covers most points


def test_a_daily_season_is_forecast_within_ten_percent() -> None:
    # GIVEN two days and a half of a noisy diurnal series, WHEN the rest is forecast three
    # intervals ahead, THEN the error is under 10% and the upper quantile covers most points
    y = diurnal(3)
    split = int(2.5 * DAY)
    model = forecaster_for(y[:split], 60.0, 3)
    mean, upper = replay(model, y[split:], 3)
    actual = y[split + 2 :]
    assert float(np.mean(np.abs(mean - actual) / actual)) < 0.10
    assert np.mean(upper >= actual) > 0.85


def test_the_upper_quantile_comes_from_the_chosen_models_own_errors() -> None:
    y = diurnal(1, noise=0.1)
    f = forecaster_for(y, 60.0, 2).predict(2, quantile=0.9)
    assert len(f.errors) >= 10
    margin = max(float(np.quantile(f.errors, 0.9)), 0.0)
    assert f.upper == pytest.approx(f.mean + margin)
    assert np.all(f.upper >= f.mean)


def test_a_level_shift_is_followed_within_minutes() -> None:
    # a steady 1000 for two hours, then 3000: the forecast follows within ten minutes
    y = np.concatenate([np.full(120, 1000.0), np.full(20, 3000.0)])
    model = forecaster_for(y[:130], 60.0, 1)
    assert model.predict(1).mean[0] == pytest.approx(3000, rel=0.05)


def test_almost_no_history_keeps_generous_headroom() -> None:
    model = forecaster_for([100.0, 120.0, 110.0], 60.0)
    f = model.predict(1)
    assert len(f.errors) == 0
    assert f.upper[0] >= 1.5 * f.mean[0] - 1e-9
    assert f.upper[0] >= 120.0


def test_no_history_forecasts_nothing_rather_than_a_guess() -> None:
    f = Forecaster(seasons_for(60)).predict(3)
    assert f.method == "none"
    assert np.all(f.mean == 0) and np.all(f.upper == 0)


def test_only_restricts_the_candidates_to_a_baseline() -> None:
    y = timers(4)
    model = forecaster_for(y, 60.0, 2, refit_every=1, only=("naive",))
    f = model.predict(2)
    assert f.method == "naive" and set(f.backtest_mae) == {"naive"}
    assert f.mean[0] == pytest.approx(y[-1])  # refit every interval: the last observation


def test_missing_intervals_count_as_no_load() -> None:
    model = forecaster_for([np.nan] * 30, 60.0)
    assert model.predict(1).mean[0] == 0.0


def test_without_statsmodels_the_report_says_what_was_not_tried(monkeypatch) -> None:
    from core.autoscale import forecast

    monkeypatch.setattr(forecast, "_statsmodels_missing", lambda: True)
    f = forecaster_for(diurnal(0.5), 60.0, 2).predict(2)
    assert f.untried == ("holt_winters, mstl: statsmodels is not installed (gpufan[forecast])",)
    assert not any(name.startswith(("holt_winters", "mstl")) for name in f.backtest_mae)


def test_the_ranking_quantile_is_the_one_asked_for() -> None:
    y = timers(4)
    low = forecaster_for(y, 60.0, 2, quantile=0.6).predict(2)
    high = forecaster_for(y, 60.0, 2, quantile=0.99).predict(2)
    assert low.backtest_mae == high.backtest_mae  # the same forecasts, scored at two quantiles
    assert low.backtest_loss != high.backtest_loss
