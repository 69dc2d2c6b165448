"""What a VM needs to run ``mqttlab``, as one reproducible tarball and its content hash.

pulumi-command's ``CopyToRemote`` accepts only a path-based ``FileAsset``, a ``StringAsset`` or a
path-based ``FileArchive`` (its Check: "archive must be a path to a file or directory";
provider/pkg/provider/remote/copyController.go), so the bundle is written to a file first. The
tarball is byte-for-byte reproducible (sorted names, fixed owner and times, gzip without a
timestamp): its SHA-256 changes exactly when a source file or the experiment changes, and that
hash is the install trigger. The stack file inside is rendered from the experiment sections the
program read, never copied: ``secure:`` values (keys, passwords) in ``Pulumi.<stack>.yaml`` stay
on the operator's machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BUNDLE_DIR = ".mqttlab"
SOURCES = ("workloads", "pyproject.toml", "README.md", "Pulumi.yaml")


@dataclass(frozen=True)
class Bundle:
    path: Path
    sha256: str


def _files(root: Path) -> Iterator[tuple[str, bytes]]:
    for name in SOURCES:
        p = root / name
        if p.is_file():
            yield name, p.read_bytes()
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo"):
                    yield f.relative_to(root).as_posix(), f.read_bytes()
        else:
            raise FileNotFoundError(f"{p} is missing: run pulumi from the project directory")


def stack_document(stack: str, experiment: Mapping[str, Any]) -> str:
    """The VM's ``Pulumi.<stack>.yaml``: the experiment sections only (what ``mqttlab host``
    reads), plain values, no ``secure:`` entries and no Azure settings."""
    clean = {k: v for k, v in experiment.items() if not _secure(v)}
    return f"# rendered by the Pulumi program for stack {stack}: experiment only, no secrets\n" + yaml.safe_dump({"config": clean}, sort_keys=True)


def _secure(v: Any) -> bool:
    if isinstance(v, Mapping):
        return "secure" in v or any(_secure(x) for x in v.values())
    if isinstance(v, list):
        return any(_secure(x) for x in v)
    return False


def build_bundle(root: Path, stack: str, experiment: Mapping[str, Any]) -> Bundle:
    """Write ``.mqttlab/bundle-<stack>.tar.gz`` under ``root`` (only if its content changed)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = sorted([*_files(root), (f"Pulumi.{stack}.yaml", stack_document(stack, experiment).encode())])
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "root", "root"
            tar.addfile(info, io.BytesIO(data))
    packed = gzip.compress(raw.getvalue(), mtime=0)
    out = root / BUNDLE_DIR / f"bundle-{stack}.tar.gz"
    out.parent.mkdir(exist_ok=True)
    if not out.exists() or out.read_bytes() != packed:
        out.write_bytes(packed)
    return Bundle(out, hashlib.sha256(packed).hexdigest())
