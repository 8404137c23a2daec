"""``terraform output -json`` -> the ``targets:`` section of ``gpufan.yaml``.

Each module under ``infra/terraform/`` (aws, gcp, azure) exports an output ``gpufan_targets``: a
list of objects already shaped like ``core.config.Target``. A root configuration may re-export
them as its own ``gpufan_targets`` output or nest a module's outputs inside another output's
value, so every value found under a key ``gpufan_targets``, at any depth, is collected. Terraform
gives every attribute of an object type, unset ones as ``null``; those are dropped so that
``Target``'s own defaults apply. The result is validated through ``settings_from_dict``, so an
error names the key that is wrong and the output it came from::

    ConfigError: out.json: targets[1].usd_per_hour: Input should be greater than or equal to 0
    (targets[1] is output aws.value.gpufan_targets[0])

Pure: parsed JSON in, target dicts or YAML text out; reading and writing files is the CLI's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from core.config import Target, settings_from_dict
from core.errors import ConfigError

__all__ = ["OUTPUT_NAME", "collect_targets", "render_targets", "targets_from_outputs"]

OUTPUT_NAME = "gpufan_targets"  # the output every module in infra/terraform exports
_INDEX = re.compile(r"targets\[(\d+)\]")


def _in_field_order(target: dict[str, Any]) -> dict[str, Any]:
    """Terraform sorts object keys; ``Target``'s declaration order reads better in YAML."""
    order = {name: i for i, name in enumerate(Target.model_fields)}
    return dict(sorted(target.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _drop_nulls(value: Any) -> Any:
    """Terraform's ``null`` for an unset attribute means "use the default": remove it."""
    if isinstance(value, Mapping):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(path, list)`` for every ``gpufan_targets`` key below ``value``."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            where = f"{path}.{key}"
            if key == OUTPUT_NAME:
                yield where, child
            else:
                yield from _walk(child, where)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _walk(child, f"{path}[{i}]")


def collect_targets(outputs: Mapping[str, Any], *, source: str) -> list[tuple[str, dict[str, Any]]]:
    """Every target object in a ``terraform output -json`` document, with where it came from.

    The document maps output names to ``{"value": ..., "type": ..., "sensitive": bool}``. An
    output named ``gpufan_targets`` is taken whole; any other output is searched for nested
    ``gpufan_targets`` keys (a module's outputs re-exported as one object). A target that appears
    twice with identical content (re-exported at two levels) is kept once.

    Raises:
        ConfigError: the document is not that shape, a ``gpufan_targets`` value is not a list of
            objects, or no ``gpufan_targets`` value is found at all.
    """
    if not isinstance(outputs, Mapping):
        raise ConfigError(f"{source}: expected the object `terraform output -json` prints")
    found: list[tuple[str, Any]] = []
    for name, output in outputs.items():
        if not isinstance(output, Mapping) or "value" not in output:
            raise ConfigError(
                f"{source}: output {name!r} has no 'value' (is this `terraform output -json`?)"
            )
        if name == OUTPUT_NAME:
            found.append((f"{name}", output["value"]))
        else:
            found.extend(_walk(output["value"], f"{name}.value"))
    if not found:
        raise ConfigError(
            f"{source}: no output named {OUTPUT_NAME!r} (nor one nested in another output); "
            f"outputs present: {sorted(outputs) or 'none'}"
        )
    targets: list[tuple[str, dict[str, Any]]] = []
    seen: list[dict[str, Any]] = []
    for where, value in found:
        if value is None:  # a module that is switched off (count = 0) exports null
            continue
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where}: expected a list of targets, got {value!r}")
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise ConfigError(f"{source}: {where}[{i}]: expected an object, got {item!r}")
            target = _in_field_order(_drop_nulls(item))
            if target not in seen:
                seen.append(target)
                targets.append((f"{where}[{i}]", target))
    return targets


def targets_from_outputs(
    outputs: Mapping[str, Any], *, source: str = "terraform output"
) -> list[dict[str, Any]]:
    """The validated target dicts of a ``terraform output -json`` document, in output order.

    Raises:
        ConfigError: naming the output and the key when a target is not a valid ``Target``.
    """
    collected = collect_targets(outputs, source=source)
    targets = [t for _, t in collected]
    try:
        settings_from_dict({"targets": targets}, source=source)
    except ConfigError as e:
        indices = sorted({int(i) for i in _INDEX.findall(str(e))})
        origins = ", ".join(f"targets[{i}] is output {collected[i][0]}" for i in indices)
        raise ConfigError(f"{e} ({origins})" if origins else str(e)) from None
    return targets


def render_targets(targets: list[dict[str, Any]], *, source: str) -> str:
    """YAML for ``gpufan.yaml``: a ``targets:`` section, headed by where it came from."""
    body = yaml.safe_dump({"targets": targets}, sort_keys=False, default_flow_style=False)
    return f"# generated by `gpufan targets --from-terraform {source}`\n{body}"
