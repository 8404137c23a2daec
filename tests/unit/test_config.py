"""gpufan.yaml validation: good files load, bad ones fail naming the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_settings, settings_from_dict
from core.errors import ConfigError

EXAMPLE = """
models:
  - name: digits
    repository: ./models
targets:
  - name: local-a
    backend: http
    endpoint: http://127.0.0.1:8101
    cloud: onprem
    region: home
    accelerator: cpu
    pricing: owned
    usd_per_hour: 0.0
    max_concurrency: 4
policy:
  slo_ms: 1000
  max_shard_items: 64
"""


def test_the_documented_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "gpufan.yaml"
    path.write_text(EXAMPLE)
    settings = load_settings(path)
    assert settings.targets[0].endpoint == "http://127.0.0.1:8101"
    assert settings.policy.max_shard_items == 64
    assert settings.models[0].repository == tmp_path / "models"  # relative to the file


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {
                "targets": [
                    {"name": "a", "backend": "http", "endpoint": "http://x", "usd_per_hour": -1}
                ]
            },
            "targets[0].usd_per_hour: Input should be greater than or equal to 0",
        ),
        (
            {"targets": [{"name": "a", "backend": "http", "endpont": "http://x"}]},
            "targets[0].endpont: Extra inputs are not permitted",
        ),
        ({"targets": [{"name": "a", "backend": "http"}]}, "needs an 'endpoint'"),
        (
            {"targets": [{"name": "a", "backend": "http", "endpoint": "ftp://x"}]},
            "targets[0].endpoint: Value error, must start with http://",
        ),
        (
            {
                "targets": [
                    {"name": "a", "backend": "http", "endpoint": "http://x", "pricing": "free"}
                ]
            },
            "targets[0].pricing: Input should be 'on_demand', 'spot', 'serverless' or 'owned'",
        ),
        ({"policy": {"max_shard_items": 0}}, "policy.max_shard_items"),
        ({"models": [{"name": "m"}, {"name": "m"}]}, "duplicate model names: m"),
        (
            {
                "models": [{"name": "m"}],
                "targets": [
                    {"name": "a", "backend": "http", "endpoint": "http://x", "models": ["n"]}
                ],
            },
            "names unknown models: n",
        ),
    ],
)
def test_errors_name_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(doc)
    assert message in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(bad)


def test_settings_are_frozen() -> None:
    settings = settings_from_dict({})
    with pytest.raises(Exception, match="frozen"):
        settings.policy.slo_ms = 5  # type: ignore[misc]


def test_an_idle_hold_is_for_serverless_targets_only() -> None:
    from core.config import Target

    held = Target(name="aca", backend="aca", pricing="serverless", idle_hold_s=60.0)
    assert held.idle_hold_s == 60.0
    with pytest.raises(ValueError, match="idle_hold_s is for serverless targets; this one is spot"):
        Target(name="vm", backend="http", endpoint="http://h:1", pricing="spot", idle_hold_s=60)
