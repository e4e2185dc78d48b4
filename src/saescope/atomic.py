"""Atomic writes and checksum manifests: no reader ever sees a half-written file or directory.

Every file saescope writes goes through here: a temporary sibling is written, flushed to disk, then
renamed over the target (rename is atomic on POSIX within one filesystem). Directories that must be
complete as a whole (a converted model, a release folder) carry a manifest of sizes and SHA-256
checksums, written last, so that a truncated or corrupted file is detected and named. A single weight
or checkpoint file records its SHA-256 beside it instead (`atomic_write_checksummed`), and every reader
checks it with `verify_checksum`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST_NAME = "SAESCOPE_MANIFEST.json"
#: Suffix of the file beside a weight or checkpoint file that records its SHA-256 (`checksum_path`).
CHECKSUM_SUFFIX = ".sha256"
_HASH_BLOCK_BYTES = 1 << 24
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
#: Files already reported as unverified in this process (the note is printed once per file).
_NOTED_UNVERIFIED: set[Path] = set()

log = logging.getLogger(__name__)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


class CorruptFileError(RuntimeError):
    """A file is missing, truncated or does not match its recorded checksum."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks so memory stays flat for multi-GB files."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(handle)` on a temporary sibling of `path`, then rename it over `path`.

    Readers see either the old file or the complete new one, never a partial write.
    """
    _write_then_replace(path, write, before_replace=None)


def _write_then_replace(
    path: Path, write: Callable[[BinaryIO], object], before_replace: Callable[[Path], None] | None
) -> None:
    """`atomic_write_with`, calling `before_replace(temporary file)` once it is complete on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_name, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace(Path(tmp_name))
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_with(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------
# One file's checksum, recorded beside it (weights, checkpoints)
# ------------------------------------------------------------------------------------------------


def read_json_object(path: Path, error: Callable[[str], Exception]) -> dict[str, Any]:
    """The JSON object in ``path``; ``error(problem)`` is raised, ``problem`` naming the file and what is wrong, when
    it is not UTF-8 JSON or holds another JSON value than an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path} is not valid JSON: {problem}") from problem
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def checksum_path(path: Path) -> Path:
    """Where the SHA-256 of `path` is recorded: ``<name>.sha256`` beside it, in the format of the
    ``sha256sum`` tool (so ``sha256sum -c <name>.sha256`` checks it by hand too)."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def atomic_write_checksummed(path: Path, write: Callable[[BinaryIO], object]) -> str:
    """`atomic_write_with`, recording the new file's SHA-256 beside it (`checksum_path`); returns the digest.

    Every reader checks the file with `verify_checksum`. A kill at any moment leaves a record that
    matches whichever file is on disk: before the rename the record lists the new digest and the current
    file's, after it only the new one.
    """
    record = checksum_path(path)
    digest = ""

    def record_before_replace(temporary: Path) -> None:
        nonlocal digest
        digest = sha256_file(temporary)
        atomic_write_text(record, _checksum_lines(path.name, [digest, *_digests_of_current_file(path)]))

    _write_then_replace(path, write, record_before_replace)
    atomic_write_text(record, _checksum_lines(path.name, [digest]))
    return digest


def verify_checksum(path: Path, remedy: str) -> bool:
    """Check `path` against the SHA-256 recorded beside it by `atomic_write_checksummed`.

    True when it matches. False, with a one-line note (once per file and process), when no checksum is
    recorded: a file written before saescope recorded them, or by another tool. `CorruptFileError` naming
    the file, the expected and the actual checksum, then `remedy` (what to do), when it does not match or
    is missing.
    """
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing. {remedy}")
    expected = _recorded_digests(path, remedy)
    if expected is None:
        if path.resolve() not in _NOTED_UNVERIFIED:
            _NOTED_UNVERIFIED.add(path.resolve())
            log.warning("%s has no recorded checksum (written before saescope recorded them): read unverified", path)
        return False
    actual = sha256_file(path)
    if actual not in expected:
        raise CorruptFileError(
            f"{path} is corrupted: its SHA-256 is {actual}, but {checksum_path(path).name} beside it records "
            f"{' or '.join(expected)}. {remedy}"
        )
    return True


def remove_checksummed(path: Path) -> None:
    """Delete a file written by `atomic_write_checksummed` and its checksum record (either may be absent)."""
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


def _checksum_lines(name: str, digests: list[str]) -> str:
    return "".join(f"{digest}  {name}\n" for digest in dict.fromkeys(digests))


def _recorded_digests(path: Path, remedy: str) -> list[str] | None:
    """The digests recorded for `path`, None when there is no record; CorruptFileError for a damaged record."""
    record = checksum_path(path)
    if not record.is_file():
        return None
    try:
        digests = [line.split()[0] for line in record.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise CorruptFileError(f"{record} (the checksum of {path.name}) is unreadable: {error}. {remedy}") from error
    if not digests or not all(_HEX_DIGEST.fullmatch(digest) for digest in digests):
        raise CorruptFileError(
            f"{record} is damaged: it should hold lines '<64 hex digits>  {path.name}', so {path} cannot be "
            f"checked. {remedy}"
        )
    return digests


def _digests_of_current_file(path: Path) -> list[str]:
    """The digest of the file now at `path` ([] when there is none), from its record when that is unambiguous."""
    if not path.is_file():
        return []
    try:
        recorded = _recorded_digests(path, "")
    except CorruptFileError:
        recorded = None
    return recorded if recorded is not None and len(recorded) == 1 else [sha256_file(path)]


def write_manifest(directory: Path, extra: dict[str, Any] | None = None) -> None:
    """Record size and SHA-256 of every file under `directory` (the manifest itself excluded)."""
    files = {}
    for file_path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        relative = file_path.relative_to(directory).as_posix()
        files[relative] = {"size": file_path.stat().st_size, "sha256": sha256_file(file_path)}
    atomic_write_json(directory / MANIFEST_NAME, {"files": files, **(extra or {})})


def read_manifest(directory: Path) -> dict[str, Any]:
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise CorruptFileError(f"{directory} is incomplete: {MANIFEST_NAME} is missing")
    return read_json_object(manifest_path, CorruptFileError)


def verify_manifest(directory: Path, *, check_hashes: bool = True) -> dict[str, Any]:
    """Check every file listed in the manifest; raise `CorruptFileError` naming the first bad file."""
    manifest = read_manifest(directory)
    for relative, recorded in manifest["files"].items():
        file_path = directory / relative
        if not file_path.is_file():
            raise CorruptFileError(f"{file_path} is missing (listed in {directory / MANIFEST_NAME})")
        size = file_path.stat().st_size
        if size != recorded["size"]:
            raise CorruptFileError(f"{file_path} has {size} bytes, expected {recorded['size']} (truncated?)")
        if check_hashes and sha256_file(file_path) != recorded["sha256"]:
            raise CorruptFileError(f"{file_path} does not match its recorded SHA-256 checksum (corrupted)")
    return manifest


@contextlib.contextmanager
def atomic_directory(target: Path, manifest_extra: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success, checksum it and move it to `target` in one rename.

    An existing `target` (for example an incomplete one from a killed process) is replaced. On an
    exception the temporary directory is removed and `target` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    os.chmod(staging, 0o777 & ~_UMASK)
    try:
        yield staging
        write_manifest(staging, manifest_extra)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, retired / "content")
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
