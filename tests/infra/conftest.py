"""Terraform read without Terraform: every module under ``infra/terraform`` parsed by python-hcl2.

- ``tf``: factory fixture, ``tf("aws")`` / ``tf("examples/multi_cloud")`` -> ``TfModule``: one
  module folder, its files' blocks merged (``variables``, ``resources``, ``outputs``, ``locals``,
  ``modules``) and its raw text for reference scans.
- ``parse_tf``: fixture, one ``.tf`` file -> dict.

python-hcl2 8 keeps HCL's quotes around strings unless asked not to; ``_unquote`` also makes
older releases' output (already unquoted) read the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest

TF_ROOT = Path(__file__).parents[2] / "infra" / "terraform"
_META_KEYS = frozenset(
    {"__is_block__", "__comments__", "__inline_comments__", "__start_line__", "__end_line__"}
)


def _unquote(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {_unquote(k): _unquote(v) for k, v in value.items() if k not in _META_KEYS}
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _parse(path: Path) -> dict[str, Any]:
    """One ``.tf`` file as python-hcl2 reads it, with strings unquoted."""
    options = None
    if hasattr(hcl2, "SerializationOptions"):  # python-hcl2 >= 8
        options = hcl2.SerializationOptions(
            strip_string_quotes=True, explicit_blocks=False, with_comments=False
        )
    with path.open() as f:
        doc = hcl2.load(f) if options is None else hcl2.load(f, serialization_options=options)
    return _unquote(doc)


@dataclass
class TfModule:
    path: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)

    def _blocks(self, kind: str) -> list[dict[str, Any]]:
        return [block for doc in self.files.values() for block in doc.get(kind, [])]

    @property
    def variables(self) -> dict[str, dict[str, Any]]:
        return {name: body for block in self._blocks("variable") for name, body in block.items()}

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        return {name: body for block in self._blocks("output") for name, body in block.items()}

    @property
    def locals(self) -> dict[str, Any]:
        return {k: v for block in self._blocks("locals") for k, v in block.items()}

    @property
    def resources(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {
            (kind, name): body
            for block in self._blocks("resource")
            for kind, named in block.items()
            for name, body in named.items()
        }

    @property
    def modules(self) -> dict[str, dict[str, Any]]:
        return {name: body for block in self._blocks("module") for name, body in block.items()}

    def resource(self, kind: str, name: str = "this") -> dict[str, Any]:
        return self.resources[(kind, name)]

    @property
    def all_text(self) -> str:
        return "\n".join(self.text.values())


@cache
def _load(path: Path) -> TfModule:
    module = TfModule(path)
    for tf in sorted(path.glob("*.tf")):
        module.files[tf.name] = _parse(tf)
        module.text[tf.name] = tf.read_text()
    return module


@pytest.fixture
def tf() -> Callable[[str], TfModule]:
    """``tf("aws")``: the module folder under infra/terraform, parsed once per session."""
    return lambda name: _load(TF_ROOT / name)


@pytest.fixture
def parse_tf() -> Callable[[Path], dict[str, Any]]:
    return _parse
