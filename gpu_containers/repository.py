"""A Triton-style model repository: ``REPO/{model}/{version}/model.onnx`` (+ ``config.pbtxt``).

Layout::

    REPO/
      digits/
        config.pbtxt          optional; the batching subset is read, other keys are ignored
        1/model.onnx
        2/model.onnx          the highest numeric version is served by default

``config.pbtxt`` is read by ``core.wire.modelconfig`` (the front door reads it too).

Unlike Triton, dynamic batching is on by default: a worker exists to merge concurrent requests,
so a bare repository (no config) batches with ``core.wire.modelconfig``'s defaults unless the
CLI turns it off.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.errors import ConfigError, NotFound
from core.wire.modelconfig import CONFIG_FILE, BatchingConfig, ModelConfig, read_config

__all__ = ["VARIANTS_DIR", "ModelEntry", "Repository"]

_MODEL_FILE = "model.onnx"
VARIANTS_DIR = "variants"  # {version}/variants/{variant}.onnx, written by gpufan optimize


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model directory: its versions (sorted numerically) and batching settings."""

    name: str
    versions: dict[str, Path]
    config: ModelConfig
    variants: Mapping[str, str] = field(default_factory=dict)  # version -> variant served

    @property
    def batching(self) -> BatchingConfig:
        return self.config.batching

    def variant(self, version: str) -> str:
        """The precision variant served for ``version``: "fp32" (model.onnx) or its name."""
        return self.variants.get(version, "fp32")

    @property
    def latest(self) -> str:
        return next(reversed(self.versions))

    def resolve(self, version: str | None) -> str:
        """The version to serve: the highest when ``version`` is None; NotFound lists the rest."""
        if version is None:
            return self.latest
        if version not in self.versions:
            raise NotFound(
                f"model {self.name!r} has no version {version!r}; "
                f"available: {', '.join(self.versions)}"
            )
        return version


class Repository:
    """The models found under a repository root, read once at start-up."""

    def __init__(self, root: Path, models: dict[str, ModelEntry]) -> None:
        self.root = root
        self.models = models

    @classmethod
    def load(
        cls,
        root: str | Path,
        *,
        max_batch_size: int | None = None,
        max_queue_delay_us: int | None = None,
        dynamic_batching: bool = True,
        variant: str | None = None,
    ) -> Repository:
        """Scan ``root``; explicit arguments (the CLI flags) override each model's config.

        ``variant`` (``gpufan optimize``'s ``int8``, ``fp16``, ``ort``) serves
        ``{version}/variants/{variant}.onnx`` wherever it exists, ``model.onnx`` elsewhere.

        Raises:
            ConfigError: the root is missing or holds no model, or a config.pbtxt is malformed.
        """
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"model repository {root} does not exist or is not a directory")
        models: dict[str, ModelEntry] = {}
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            versions = {
                v.name: v / _MODEL_FILE
                for v in sorted(
                    (d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()),
                    key=lambda d: int(d.name),
                )
                if (v / _MODEL_FILE).is_file()
            }
            if not versions:
                continue
            config = read_config(model_dir / CONFIG_FILE)
            batching = config.batching
            if max_batch_size is not None:
                batching = replace(batching, max_batch_size=max_batch_size)
            if max_queue_delay_us is not None:
                batching = replace(batching, max_queue_delay_us=max_queue_delay_us)
            if not dynamic_batching:
                batching = replace(batching, dynamic_batching=False)
            config = replace(config, batching=batching)
            chosen = {}
            if variant is not None:
                for v, path in versions.items():
                    if (alt := path.parent / VARIANTS_DIR / f"{variant}.onnx").is_file():
                        versions[v], chosen[v] = alt, variant
            models[model_dir.name] = ModelEntry(model_dir.name, versions, config, chosen)
        if not models:
            raise ConfigError(
                f"model repository {root} holds no model: expected {root}/<model>/<version>/"
                f"{_MODEL_FILE} with a numeric <version>"
            )
        return cls(root, models)

    def entry(self, model: str) -> ModelEntry:
        """The named model; NotFound lists the available ones."""
        try:
            return self.models[model]
        except KeyError:
            raise NotFound(
                f"unknown model {model!r}; available: {', '.join(self.models)}"
            ) from None

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.models.values())
