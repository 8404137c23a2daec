"""Which wheels each function platform loads, as the pip flags that select them.

GIVEN the runtimes the Terraform modules offer,
WHEN ``core.cli.platforms`` turns one into pip flags or checks a bundle's binaries,
THEN every manylinux tag at or under the platform's glibc is asked for (and none above), the CPU
is the architecture's, an unknown runtime is refused by name, and an ELF for another CPU is found.
"""

from __future__ import annotations

import re

import pytest

from core.cli.platforms import (
    azure_platform,
    foreign_binaries,
    gcf_platform,
    lambda_platform,
)
from core.errors import ConfigError


def _glibc(tag: str) -> tuple[int, int]:
    legacy = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
    for name, floor in legacy.items():
        if tag.startswith(name + "_"):
            return floor
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_\w+", tag)
    assert m, tag
    return int(m[1]), int(m[2])


@pytest.mark.parametrize(
    ("runtime", "glibc"),
    [("python3.11", (2, 26)), ("python3.12", (2, 34)), ("python3.13", (2, 34))],
)
def test_lambda_tags_reach_the_runtime_glibc_and_never_past_it(
    runtime: str, glibc: tuple[int, int]
) -> None:
    tags = lambda_platform(runtime, "x86_64").wheel_platforms()
    assert max(map(_glibc, tags)) == glibc
    # onnxruntime's (2_27/2_28) and numpy's (2_17 + 2_28) tags: what python3.12 must find
    if glibc >= (2, 28):
        assert {"manylinux_2_28_x86_64", "manylinux_2_17_x86_64"} <= set(tags)
    assert "manylinux2014_x86_64" in tags  # wheels tagged only with the legacy name
    assert all(t.endswith("_x86_64") for t in tags)


def test_arm64_asks_for_aarch64_wheels_and_the_runtime_python() -> None:
    platform = lambda_platform("python3.12", "arm64")
    args = platform.pip_args()
    assert platform.machine == "aarch64"
    assert all(t.endswith("_aarch64") for t in platform.wheel_platforms())
    assert "manylinux2010_aarch64" not in platform.wheel_platforms()  # never existed
    assert args[args.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in args and args[args.index("--implementation") + 1] == "cp"
    assert args.count("--platform") == len(platform.wheel_platforms())


def test_the_other_clouds_platforms() -> None:
    gcf, azure = gcf_platform("python312"), azure_platform("3.11")
    assert (gcf.python, gcf.glibc, gcf.machine) == ("3.12", (2, 35), "x86_64")
    assert (azure.python, azure.glibc) == ("3.11", (2, 31))
    assert gcf.as_json()["glibc"] == "2.35"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: lambda_platform("python3.9", "x86_64"), "Lambda runtime 'python3.9'"),
        (lambda: lambda_platform("python3.12", "aarch64"), "Lambda architecture 'aarch64'"),
        (lambda: gcf_platform("python3.12"), "python311, python312, python313"),
        (lambda: azure_platform("3.10"), "Azure Functions Python version '3.10'"),
    ],
)
def test_an_unknown_runtime_is_refused_by_name(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()  # type: ignore[operator]


def _elf(machine: int) -> bytes:
    return b"\x7fELF\x02\x01\x01" + bytes(11) + machine.to_bytes(2, "little") + bytes(40)


def test_foreign_binaries_reads_each_elf_machine() -> None:
    files = {
        "numpy/_core/_multiarray.so": _elf(0x3E),
        "yaml/_yaml.so": _elf(0xB7),
        "core/config.py": b"# text that names \x7fELF later on",
        "notes.txt": b"plain",
    }
    assert foreign_binaries(files, "x86_64") == ["yaml/_yaml.so"]
    assert foreign_binaries(files, "aarch64") == ["numpy/_core/_multiarray.so"]
