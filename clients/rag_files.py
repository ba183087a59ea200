"""A set of files to ingest: which files (folders walked, globs), how they travel (batches
of small files, uploads of large ones), what became of each, and the set's progress.

The calls themselves are made by `RagClient.ingest_files`; this module does no I/O beyond
listing folders and reading file sizes.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "BATCH_BYTES",
    "MAX_BATCH_DOCUMENTS",
    "UPLOAD_BYTES",
    "FileOutcome",
    "FileStatus",
    "IngestPlan",
    "IngestProgress",
    "IngestReport",
    "collect_files",
    "plan_ingestion",
]

# A file larger than this is streamed through UploadDocument; smaller ones are sent inline,
# several per IngestDocuments call, each call's documents at most BATCH_BYTES in all: half
# the server's default 16 MiB message limit, room for the envelope and a lower limit.
UPLOAD_BYTES = 4 * 1024 * 1024
BATCH_BYTES = 8 * 1024 * 1024
# IngestDocuments takes at most 100 documents.
MAX_BATCH_DOCUMENTS = 100

FileStatus = Literal["pending", "succeeded", "unchanged", "failed", "canceled"]


class FileOutcome(BaseModel):
    """What became of one file: its document, status and, when it failed, why."""

    path: Path
    status: FileStatus = "pending"
    document_id: str = ""
    # The ingestion that carried it (empty when it never reached the server).
    ingestion_id: str = ""
    chunks: int = 0
    # A stable reason (`DOCUMENT_CORRUPT`, `FILE_UNREADABLE`, a gRPC code name, ...) and a
    # message, when it failed.
    reason: str = ""
    message: str = ""


class IngestReport(BaseModel):
    """Every file of the set: paths that are no file or folder first, then the files in the
    order given (folders walked in name order)."""

    files: list[FileOutcome] = Field(default_factory=list)

    def with_status(self, status: FileStatus) -> list[FileOutcome]:
        return [f for f in self.files if f.status == status]

    @property
    def ok(self) -> bool:
        """No file failed or was canceled."""
        return all(f.status in ("succeeded", "unchanged", "pending") for f in self.files)

    @property
    def ingestion_ids(self) -> list[str]:
        return sorted({f.ingestion_id for f in self.files if f.ingestion_id})


class IngestProgress(BaseModel):
    """The set's progress: files ended (done or failed) and chunks embedded, over all its
    ingestions."""

    files_total: int = 0
    files_done: int = 0
    files_failed: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    bytes_total: int = 0
    bytes_sent: int = 0


class IngestPlan(BaseModel):
    """How a set of files travels: inline batches, one upload per large file, and the files
    that failed before any call (missing, unreadable)."""

    batches: list[list[Path]] = Field(default_factory=list)
    uploads: list[Path] = Field(default_factory=list)
    sizes: dict[Path, int] = Field(default_factory=dict)
    failed: list[FileOutcome] = Field(default_factory=list)


def collect_files(
    paths: Iterable[Path], *, recursive: bool = False, globs: Sequence[str] = ()
) -> tuple[list[Path], list[FileOutcome]]:
    """The files named, and those inside the folders named (their subfolders too when
    `recursive`), in name order, without duplicates; the paths that are neither, as
    failures. `globs` filter files found in folders (a file matches when its name or its
    path relative to the folder matches one pattern); files named directly are always
    taken. Hidden files and folders (a leading `.`) inside folders are skipped."""
    files: list[Path] = []
    missing: list[FileOutcome] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for path in paths:
        if path.is_dir():
            for found in _walk(path, recursive):
                relative = found.relative_to(path).as_posix()
                if not globs or any(
                    fnmatch.fnmatch(found.name, g) or fnmatch.fnmatch(relative, g) for g in globs
                ):
                    add(found)
        elif path.is_file():
            add(path)
        else:
            reason, message = (
                ("NOT_A_FILE", "not a file or a folder")
                if path.exists()
                else ("FILE_NOT_FOUND", "no such file or folder")
            )
            missing.append(FileOutcome(path=path, status="failed", reason=reason, message=message))
    return files, missing


def _walk(folder: Path, recursive: bool) -> list[Path]:
    found: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return [p for p in found if p.is_file()]


def plan_ingestion(
    files: Sequence[Path],
    *,
    upload_bytes: int = UPLOAD_BYTES,
    batch_bytes: int = BATCH_BYTES,
    max_batch_documents: int = MAX_BATCH_DOCUMENTS,
) -> IngestPlan:
    """Files over `upload_bytes` as uploads; the others in order, packed into batches of at
    most `batch_bytes` and `max_batch_documents`. A file whose size cannot be read fails."""
    plan = IngestPlan()
    batch: list[Path] = []
    batch_size = 0
    for path in files:
        try:
            size = path.stat().st_size
        except OSError as exc:
            plan.failed.append(
                FileOutcome(path=path, status="failed", reason="FILE_UNREADABLE", message=str(exc))
            )
            continue
        plan.sizes[path] = size
        if size > upload_bytes:
            plan.uploads.append(path)
            continue
        if batch and (batch_size + size > batch_bytes or len(batch) >= max_batch_documents):
            plan.batches.append(batch)
            batch, batch_size = [], 0
        batch.append(path)
        batch_size += size
    if batch:
        plan.batches.append(batch)
    return plan
