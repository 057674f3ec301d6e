"""Artifact directories: a ``manifest.json`` with hashes, written atomically, verified on load.

Every saved thing (adapter, knowledge base, report, converted model) is a directory. Writers fill a
temporary sibling directory; only when every file is written and the manifest lists their sha256 is
the directory renamed into place, so a crash at any point leaves the previous artifact loadable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from promptkit._version import __version__
from promptkit.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_TMP_MARK = ".tmp-"
_OLD_MARK = ".old-"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows fsync on a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _list_files(root: Path) -> list[str]:
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            files.append(path.relative_to(root).as_posix())
    return files


def _recover(path: Path) -> None:
    """Finish an interrupted swap: if ``path`` is gone but its backup survived, put it back."""
    if path.exists():
        return
    backups = sorted(path.parent.glob(f".{path.name}{_OLD_MARK}*"), key=lambda p: p.stat().st_mtime)
    if backups:
        os.replace(backups[-1], path)


@contextlib.contextmanager
def write_artifact(
    path: str | os.PathLike[str],
    kind: str,
    config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success, add the manifest and move it to ``path``.

    If the body raises, the temporary directory is removed and ``path`` is left as it was.
    """
    target = Path(path).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    staging = target.parent / f".{target.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        files = {}
        for rel in _list_files(staging):
            file_path = staging / rel
            files[rel] = {"sha256": sha256_file(file_path), "bytes": file_path.stat().st_size}
            with open(file_path, "rb+") as handle:
                os.fsync(handle.fileno())
        manifest = {
            "format_version": FORMAT_VERSION,
            "promptkit_version": __version__,
            "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config or {},
            "meta": meta or {},
            "files": files,
        }
        manifest_path = staging / MANIFEST_NAME
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        with open(manifest_path, "rb+") as handle:
            os.fsync(handle.fileno())
        _fsync_dir(staging)
        _swap_into_place(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ArtifactError(
                f"Could not write the artifact {target}: {exc}. "
                "The previous artifact there (if any) is unchanged; free space or fix permissions "
                "and save again."
            ) from exc
        raise


@contextlib.contextmanager
def write_files(
    path: str | os.PathLike[str],
    kind: str,
    config: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Like :func:`write_artifact`, for a folder that also holds other things.

    The files are written into a temporary sibling first; only when all of them are written are
    they renamed one by one into ``path``, and the manifest (listing just them) last. Whatever
    else lives in ``path`` (saved adapters, other reports) is left alone, and a failed write
    leaves every earlier file as it was.
    """
    target = Path(path).expanduser().resolve()
    with write_artifact(target.parent / f".{target.name}.files", kind, config, meta) as staging:
        yield staging
    staged = target.parent / f".{target.name}.files"
    try:
        target.mkdir(parents=True, exist_ok=True)
        names = [p.name for p in staged.iterdir() if p.name != MANIFEST_NAME]
        for name in names:
            destination = target / name
            if destination.is_dir():
                shutil.rmtree(destination)
            os.replace(staged / name, destination)
        os.replace(staged / MANIFEST_NAME, target / MANIFEST_NAME)
        _fsync_dir(target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _swap_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        backup = target.parent / f".{target.name}{_OLD_MARK}{uuid.uuid4().hex[:8]}"
        os.replace(target, backup)
        os.replace(staging, target)
        _fsync_dir(target.parent)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(staging, target)
        _fsync_dir(target.parent)


def read_manifest(
    path: str | os.PathLike[str], kind: str | None = None, verify: bool = True
) -> dict[str, Any]:
    """Read and check an artifact's manifest; with ``verify``, check every file's size and hash.

    Raises :class:`ArtifactError` naming the broken file and what to do about it.
    """
    root = Path(path).expanduser()
    _recover(root.resolve())
    if not root.is_dir():
        raise ArtifactError(f"No artifact directory at {root}. Check the path, or save one first.")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{manifest_path} is missing: {root} is not a promptkit artifact, or it is incomplete."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"{manifest_path} is corrupted ({exc}). Restore the artifact from a copy or rebuild it."
        ) from exc
    if not isinstance(manifest, dict) or not {"format_version", "kind", "files"} <= manifest.keys():
        raise ArtifactError(
            f"{manifest_path} lacks format_version, kind or files: not a promptkit manifest."
        )
    version = manifest["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{root} was written with artifact format {version!r} by promptkit "
            f"{manifest.get('promptkit_version', '?')}; this promptkit ({__version__}) reads "
            f"format "
            f"{FORMAT_VERSION} and older. Upgrade promptkit to load it."
        )
    if kind is not None and manifest["kind"] != kind:
        raise ArtifactError(f"{root} holds a {manifest['kind']!r} artifact, not a {kind!r} one.")
    if verify:
        verify_files(root, manifest)
    return manifest


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{root / MANIFEST_NAME} has no valid 'files' table.")
    for rel, entry in files.items():
        file_path = root / rel
        if not file_path.is_file():
            raise ArtifactError(
                f"{file_path} is missing from the artifact {root}. Restore it or save the artifact "
                "again."
            )
        size = file_path.stat().st_size
        if isinstance(entry, dict) and "bytes" in entry and size != entry["bytes"]:
            raise ArtifactError(
                f"{file_path} is truncated or altered: {size} bytes, the manifest says "
                f"{entry['bytes']}. Restore it or save the artifact again."
            )
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if expected is None or sha256_file(file_path) != expected:
            raise ArtifactError(
                f"{file_path} does not match its sha256 in the manifest: the file is corrupted or "
                "was edited. Restore it or save the artifact again."
            )


def artifact_size(path: str | os.PathLike[str]) -> int:
    """Total bytes of the files in an artifact directory."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
