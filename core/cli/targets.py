"""``gpufan targets --from-terraform out.json [--out targets.yaml]``.

Reads what ``terraform output -json`` printed for one of ``infra/terraform``'s modules (or a root
configuration composing them), turns every ``gpufan_targets`` value into validated ``Target``
entries (``core.cli.tfoutputs``) and prints or writes them as a ``targets:`` section for
``gpufan.yaml``. Nothing is merged into an existing config: the section is pasted or included by
the operator, who also owns models, policy and server settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.cli.tfoutputs import render_targets, targets_from_outputs
from core.errors import ConfigError

__all__ = ["run_targets"]


def _read(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e}); run `terraform output -json > FILE`") from None


def run_targets(args: argparse.Namespace) -> int:
    """Print or write the ``targets:`` YAML; 0 on success.

    Raises:
        ConfigError: the file is unreadable, not ``terraform output -json``'s shape, or a target
            is invalid (the message names the key and the output); ``core.cli`` exits 2.
    """
    source: Path = args.terraform
    doc = _read(source)
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a JSON object of outputs, got {type(doc).__name__}")
    targets = targets_from_outputs(doc, source=str(source))
    text = render_targets(targets, source=str(source))
    out: Path | None = args.out
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror}") from None
    print(f"wrote {len(targets)} target(s) to {out}", file=sys.stderr)
    return 0
