"""Where each function bundle's Python dependencies must load: interpreter, C library, CPU.

Pure: the runtimes each cloud offers, the pip flags that select wheels for one of them, and the
check that a built bundle holds no binary for another CPU. ``gpufan package`` (I/O) uses them.

A wheel loads where its manylinux tag's glibc is at most the platform's. pip given ``--platform``
matches that exact tag only, so every tag from the platform's glibc down to manylinux2014's 2.17 is
passed (with PEP 600's legacy aliases): ``manylinux2014`` alone misses every wheel built only for
a newer glibc (onnxruntime >= 1.18, which a front door no longer carries, was the first to fail);
one newer tag alone misses the many wheels still tagged 2.17.

Sources (read 2026-12-01): Lambda runtimes and their OS,
docs.aws.amazon.com/lambda/latest/dg/lambda-runtimes.html (python3.11 on Amazon Linux 2, glibc
2.26; python3.12 and later on Amazon Linux 2023, glibc 2.34); Cloud Functions' Python runtimes run
on Ubuntu 22.04 (glibc 2.35), cloud.google.com/functions/docs/runtime-support; Azure Functions'
Python 4.x images are Debian based: 2.31 (Debian 11) is taken as the floor, an assumption that
only ever refuses a wheel the platform could have loaded, never the reverse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.errors import ConfigError

__all__ = [
    "AZURE_PYTHON",
    "DEFAULT_PLATFORMS",
    "GCF_RUNTIMES",
    "LAMBDA_ARCHITECTURES",
    "LAMBDA_LIMIT_UNZIPPED_BYTES",
    "LAMBDA_RUNTIMES",
    "Platform",
    "azure_platform",
    "foreign_binaries",
    "gcf_platform",
    "lambda_platform",
]

# Lambda's deployment-package quota: 250 MB unzipped, layers included (docs: "Lambda quotas").
LAMBDA_LIMIT_UNZIPPED_BYTES = 262_144_000
_MANYLINUX_FLOOR = 5  # manylinux1 = manylinux_2_5, the oldest tag there is
# PEP 600's legacy names: the same glibc floors under the tags older wheels carry.
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}

# runtime -> (Python version, glibc of its OS)
LAMBDA_RUNTIMES: Mapping[str, tuple[str, tuple[int, int]]] = {
    "python3.11": ("3.11", (2, 26)),  # Amazon Linux 2
    "python3.12": ("3.12", (2, 34)),  # Amazon Linux 2023
    "python3.13": ("3.13", (2, 34)),
}
LAMBDA_ARCHITECTURES: Mapping[str, str] = {"x86_64": "x86_64", "arm64": "aarch64"}  # -> machine
GCF_RUNTIMES: Mapping[str, str] = {"python311": "3.11", "python312": "3.12", "python313": "3.13"}
_GCF_GLIBC = (2, 35)  # Ubuntu 22.04
AZURE_PYTHON: tuple[str, ...] = ("3.11", "3.12")
_AZURE_GLIBC = (2, 31)  # Debian 11: the floor assumed for the Python 4.x images

# ELF e_machine values (the System V ABI's registry) of the CPUs the functions run on.
_ELF_MACHINE = {"x86_64": 0x3E, "aarch64": 0xB7}


@dataclass(frozen=True)
class Platform:
    """One function runtime as pip must see it: ``runtime`` and ``architecture`` as the cloud
    spells them (the Terraform module's values), ``python``, ``glibc`` and ``machine`` as wheels
    do."""

    cloud: str
    runtime: str
    architecture: str
    python: str
    glibc: tuple[int, int]
    machine: str

    def wheel_platforms(self) -> tuple[str, ...]:
        """Every manylinux tag that loads here, newest first."""
        major, minor = self.glibc
        tags = []
        for m in range(minor, _MANYLINUX_FLOOR - 1, -1):
            tags.append(f"manylinux_{major}_{m}_{self.machine}")
            if m in _LEGACY and (m == 17 or self.machine == "x86_64"):  # aarch64 began at 2014
                tags.append(f"{_LEGACY[m]}_{self.machine}")
        return tuple(tags)

    def pip_args(self) -> tuple[str, ...]:
        """The flags that make ``pip install`` pick this platform's wheels (and only wheels)."""
        platforms = [arg for tag in self.wheel_platforms() for arg in ("--platform", tag)]
        return (
            "--only-binary=:all:", "--implementation", "cp", "--python-version", self.python,
            *platforms,
        )  # fmt: skip

    def describe(self) -> str:
        glibc = ".".join(map(str, self.glibc))
        return f"{self.cloud} {self.runtime} {self.architecture} (glibc {glibc}, {self.machine})"

    def as_json(self) -> dict[str, str]:
        return {
            "cloud": self.cloud,
            "runtime": self.runtime,
            "architecture": self.architecture,
            "python": self.python,
            "glibc": ".".join(map(str, self.glibc)),
            "machine": self.machine,
        }


def _choice(what: str, value: str, choices: Iterable[str]) -> None:
    options = sorted(choices)
    if value not in options:
        raise ConfigError(f"{what} {value!r} is not one of {', '.join(options)}")


def lambda_platform(runtime: str, architecture: str) -> Platform:
    """The Lambda platform the AWS module deploys (``lambda.runtime``, ``lambda.architecture``).

    Raises:
        ConfigError: a runtime or architecture Lambda does not offer for gpufan.
    """
    _choice("Lambda runtime", runtime, LAMBDA_RUNTIMES)
    _choice("Lambda architecture", architecture, LAMBDA_ARCHITECTURES)
    python, glibc = LAMBDA_RUNTIMES[runtime]
    return Platform("aws", runtime, architecture, python, glibc, LAMBDA_ARCHITECTURES[architecture])


def gcf_platform(runtime: str) -> Platform:
    """The Cloud Functions runtime the GCP module deploys (``functions.runtime``).

    Raises:
        ConfigError: not one of the runtimes in ``GCF_RUNTIMES``.
    """
    _choice("Cloud Functions runtime", runtime, GCF_RUNTIMES)
    return Platform("gcp", runtime, "x86_64", GCF_RUNTIMES[runtime], _GCF_GLIBC, "x86_64")


def azure_platform(python: str) -> Platform:
    """The Azure Functions Python the Azure module deploys (``function_app.python_version``).

    Raises:
        ConfigError: not one of ``AZURE_PYTHON``.
    """
    _choice("Azure Functions Python version", python, AZURE_PYTHON)
    return Platform("azure", python, "x86_64", python, _AZURE_GLIBC, "x86_64")


def foreign_binaries(files: Mapping[str, bytes], machine: str) -> list[str]:
    """Names of the ELF files in ``files`` built for a CPU other than ``machine``.

    A wheel pip picked for the wrong platform loads nowhere but fails only at the first import on
    the cloud; reading each shared object's ``e_machine`` catches it at build time.
    """
    want = _ELF_MACHINE[machine]
    return sorted(
        name
        for name, data in files.items()
        if data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") != want
    )


# The modules' defaults (tests/infra checks they agree): lambda.runtime and .architecture,
# functions.runtime, function_app.python_version; keyed by the bundle's extra.
DEFAULT_PLATFORMS: Mapping[str, Platform] = {
    "aws": lambda_platform("python3.12", "x86_64"),
    "gcp": gcf_platform("python312"),
    "azure": azure_platform("3.12"),
}
