"""`client.rag`: vector indexes, document ingestion, search and cited answers (RagService)."""

# `timeout=` on the async methods is the gRPC deadline of the call, as in grpc's own API.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from clients.rag_files import (
    BATCH_BYTES,
    UPLOAD_BYTES,
    FileOutcome,
    IngestProgress,
    IngestReport,
    collect_files,
    plan_ingestion,
)
from clients.transport import Transport, iter_pages, to_struct
from protos.loomwork.v1 import rag_pb2, rag_pb2_grpc

__all__ = ["RagClient"]


class RagClient:
    """Indexes (create, read, list, delete), ingestions (inline or uploaded, watched,
    cancelled), documents (list, delete), queries and streamed answers."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = rag_pb2_grpc.RagServiceStub(transport.channel)

    # -- indexes

    async def create_index(
        self,
        name: str,
        *,
        description: str = "",
        embedding_model: str = "",
        dimension: int = 0,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> rag_pb2.Index:
        """Creates a vector index (embedding model and dimension default to the server's)."""
        index = rag_pb2.Index(
            name=name,
            description=description,
            embedding_model=embedding_model,
            dimension=dimension,
            metadata=to_struct(metadata),
        )
        response = await self._transport.call(
            self._stub.CreateIndex,
            rag_pb2.CreateIndexRequest(index=index),
            rag_pb2.CreateIndexResponse,
            timeout,
        )
        return response.index

    async def get_index(self, name: str, *, timeout: float | None = None) -> rag_pb2.Index:
        response = await self._transport.call(
            self._stub.GetIndex,
            rag_pb2.GetIndexRequest(index_name=name),
            rag_pb2.GetIndexResponse,
            timeout,
        )
        return response.index

    async def list_indexes(self, *, timeout: float | None = None) -> list[rag_pb2.Index]:
        """Every index of the tenant, by name."""
        pages = iter_pages(
            lambda page_token: self._transport.call(
                self._stub.ListIndexes,
                rag_pb2.ListIndexesRequest(page_size=1000, page_token=page_token),
                rag_pb2.ListIndexesResponse,
                timeout,
            )
        )
        return [index async for page in pages for index in page.indexes]

    async def delete_index(self, name: str, *, timeout: float | None = None) -> None:
        await self._transport.call(
            self._stub.DeleteIndex,
            rag_pb2.DeleteIndexRequest(index_name=name),
            rag_pb2.DeleteIndexResponse,
            timeout,
        )

    # -- ingestion

    async def ingest_documents(
        self,
        index_name: str,
        documents: Sequence[rag_pb2.DocumentInput],
        *,
        chunking: rag_pb2.ChunkingOptions | None = None,
        client_ingestion_id: str = "",
        timeout: float | None = None,
    ) -> rag_pb2.Ingestion:
        """Starts an ingestion of inline documents; follow it with `watch_ingestion`."""
        request = rag_pb2.IngestDocumentsRequest(
            index_name=index_name,
            documents=documents,
            chunking=chunking,
            client_ingestion_id=client_ingestion_id,
        )
        response = await self._transport.call(
            self._stub.IngestDocuments, request, rag_pb2.IngestDocumentsResponse, timeout
        )
        return response.ingestion

    async def upload_document(
        self,
        index_name: str,
        data: bytes,
        document: rag_pb2.DocumentInput | None = None,
        *,
        chunking: rag_pb2.ChunkingOptions | None = None,
        piece_bytes: int = 1024 * 1024,
        timeout: float | None = None,
    ) -> rag_pb2.Ingestion:
        """Uploads one large document as a client stream (header, then 1 MiB pieces)."""

        async def requests() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
            yield rag_pb2.UploadDocumentRequest(
                header=rag_pb2.UploadDocumentHeader(
                    index_name=index_name,
                    document=document,
                    chunking=chunking,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
            for start in range(0, len(data), piece_bytes):
                yield rag_pb2.UploadDocumentRequest(chunk=data[start : start + piece_bytes])

        response = await self._transport.call(
            self._stub.UploadDocument, requests(), rag_pb2.UploadDocumentResponse, timeout
        )
        return response.ingestion

    async def upload_file(
        self,
        index_name: str,
        path: Path,
        document: rag_pb2.DocumentInput | None = None,
        *,
        chunking: rag_pb2.ChunkingOptions | None = None,
        sha256: str = "",
        piece_bytes: int = 1024 * 1024,
        on_piece: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> rag_pb2.Ingestion:
        """Uploads a file of any size as a client stream, read piece by piece (never whole
        in memory); `on_piece(n)` after each piece of n bytes is queued."""
        size = (await asyncio.to_thread(path.stat)).st_size
        if not sha256:
            sha256 = await asyncio.to_thread(file_sha256, path)

        async def requests() -> AsyncIterator[rag_pb2.UploadDocumentRequest]:
            yield rag_pb2.UploadDocumentRequest(
                header=rag_pb2.UploadDocumentHeader(
                    index_name=index_name,
                    document=document,
                    chunking=chunking,
                    size_bytes=size,
                    sha256=sha256,
                )
            )
            with path.open("rb") as file:
                while piece := await asyncio.to_thread(file.read, piece_bytes):
                    yield rag_pb2.UploadDocumentRequest(chunk=piece)
                    if on_piece is not None:
                        on_piece(len(piece))

        response = await self._transport.call(
            self._stub.UploadDocument, requests(), rag_pb2.UploadDocumentResponse, timeout
        )
        return response.ingestion

    async def ingest_files(
        self,
        index_name: str,
        paths: Sequence[Path | str],
        *,
        recursive: bool = False,
        globs: Sequence[str] = (),
        chunking: rag_pb2.ChunkingOptions | None = None,
        wait: bool = True,
        on_progress: Callable[[IngestProgress], None] | None = None,
        upload_bytes: int = UPLOAD_BYTES,
        batch_bytes: int = BATCH_BYTES,
        timeout: float | None = None,
    ) -> IngestReport:
        """Ingests files and folders of any total size: files over `upload_bytes` stream
        through UploadDocument, smaller ones go inline in IngestDocuments calls of at most
        `batch_bytes`. A file that fails (missing, unreadable, corrupt, unsupported) fails
        alone. With `wait`, follows every ingestion to its end; the report says what became
        of each file. `timeout` is the deadline of each call that sends files.

        Raises only for what fails the whole set (no such index, not authenticated)."""
        await self.get_index(index_name, timeout=timeout)
        files, missing = collect_files([Path(p) for p in paths], recursive=recursive, globs=globs)
        plan = plan_ingestion(files, upload_bytes=upload_bytes, batch_bytes=batch_bytes)
        run = _FileSetIngestion(self, index_name, chunking, wait, on_progress, timeout)
        run.start(files, missing + plan.failed, sum(plan.sizes.values()))
        for batch in plan.batches:
            await run.send_batch(batch)
        for path in plan.uploads:
            await run.send_upload(path)
        return await run.finish()

    async def get_ingestion(
        self, ingestion_id: str, *, timeout: float | None = None
    ) -> rag_pb2.Ingestion:
        response = await self._transport.call(
            self._stub.GetIngestion,
            rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id),
            rag_pb2.GetIngestionResponse,
            timeout,
        )
        return response.ingestion

    def watch_ingestion(
        self, ingestion_id: str, after_event_id: int = 0, *, keep_alives: bool = False
    ) -> AsyncIterator[rag_pb2.IngestionEvent]:
        """The ingestion's progress events until its `finished` event (no deadline);
        `keep_alives=True` also yields the keep-alives of a quiet stream (not events)."""
        request = rag_pb2.WatchIngestionRequest(
            ingestion_id=ingestion_id, after_event_id=after_event_id
        )
        return self._transport.events(
            self._stub.WatchIngestion, request, None, no_deadline=True, keep_alives=keep_alives
        )

    async def cancel_ingestion(
        self, ingestion_id: str, *, timeout: float | None = None
    ) -> rag_pb2.Ingestion:
        response = await self._transport.call(
            self._stub.CancelIngestion,
            rag_pb2.CancelIngestionRequest(ingestion_id=ingestion_id),
            rag_pb2.CancelIngestionResponse,
            timeout,
        )
        return response.ingestion

    # -- documents

    async def list_documents(
        self, index_name: str, *, timeout: float | None = None
    ) -> list[rag_pb2.Document]:
        """Every document of an index."""
        pages = iter_pages(
            lambda page_token: self._transport.call(
                self._stub.ListDocuments,
                rag_pb2.ListDocumentsRequest(
                    index_name=index_name, page_size=1000, page_token=page_token
                ),
                rag_pb2.ListDocumentsResponse,
                timeout,
            )
        )
        return [document async for page in pages for document in page.documents]

    async def delete_document(
        self, index_name: str, document_id: str, *, timeout: float | None = None
    ) -> None:
        await self._transport.call(
            self._stub.DeleteDocument,
            rag_pb2.DeleteDocumentRequest(index_name=index_name, document_id=document_id),
            rag_pb2.DeleteDocumentResponse,
            timeout,
        )

    # -- search and answers

    async def query(
        self,
        index_name: str,
        query: str,
        retrieval: rag_pb2.RetrievalOptions | None = None,
        *,
        timeout: float | None = None,
    ) -> list[rag_pb2.ScoredChunk]:
        """The best chunks for `query`, best first."""
        response = await self._transport.call(
            self._stub.Query,
            rag_pb2.QueryRequest(index_name=index_name, query=query, retrieval=retrieval),
            rag_pb2.QueryResponse,
            timeout,
        )
        return list(response.results)

    def answer(
        self,
        index_name: str,
        query: str,
        retrieval: rag_pb2.RetrievalOptions | None = None,
        *,
        model: str = "",
        client_answer_id: str = "",
        keep_alives: bool = False,
    ) -> AsyncIterator[rag_pb2.AnswerEvent]:
        """Streams an answer's events (retrieval, text deltas, citations, finished; no
        deadline); `keep_alives=True` also yields the keep-alives of a quiet stream."""
        request = rag_pb2.AnswerRequest(
            index_name=index_name,
            query=query,
            retrieval=retrieval,
            model=model,
            client_answer_id=client_answer_id,
        )
        return self._transport.events(
            self._stub.Answer, request, None, no_deadline=True, keep_alives=keep_alives
        )


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, lowercase hex, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(1024 * 1024):
            digest.update(piece)
    return digest.hexdigest()


_DOCUMENT_STATUS: dict[int, Any] = {
    rag_pb2.INGESTION_DOCUMENT_STATUS_SUCCEEDED: "succeeded",
    rag_pb2.INGESTION_DOCUMENT_STATUS_UNCHANGED: "unchanged",
    rag_pb2.INGESTION_DOCUMENT_STATUS_FAILED: "failed",
    rag_pb2.INGESTION_DOCUMENT_STATUS_CANCELED: "canceled",
}
# A batch refused for what one of its documents is (a bad field, too large) is sent again
# one document per call, so that only that document fails; a document alone still too
# large for the server's message limit is uploaded instead.
# Upload pieces when the server refuses 1 MiB ones (its message limit is 1 MiB or less).
_SMALL_PIECE = 256 * 1024
_PER_DOCUMENT_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


class _FileSetIngestion:
    """One `ingest_files` call: sends batches and uploads one after another, follows each
    ingestion from the moment it starts, and keeps each file's outcome and the set's
    progress."""

    def __init__(
        self,
        rag: RagClient,
        index_name: str,
        chunking: rag_pb2.ChunkingOptions | None,
        wait: bool,
        on_progress: Callable[[IngestProgress], None] | None,
        timeout: float | None,
    ) -> None:
        self.rag = rag
        self.index_name = index_name
        self.chunking = chunking
        self.wait = wait
        self.on_progress = on_progress
        self.timeout = timeout
        self.outcomes: dict[Path, FileOutcome] = {}
        self.order: list[Path] = []
        self.first_with_digest: dict[str, Path] = {}
        self.ingestions: dict[str, rag_pb2.IngestionProgress] = {}
        self.watchers: list[asyncio.Task[None]] = []
        self.sent_of: dict[Path, int] = {}  # bytes of each upload queued so far
        self.progress = IngestProgress()

    def start(self, files: list[Path], failed: list[FileOutcome], bytes_total: int) -> None:
        for outcome in failed:
            self.outcomes[outcome.path] = outcome
        self.order = [o.path for o in failed if o.path not in files] + files
        for path in files:
            self.outcomes.setdefault(path, FileOutcome(path=path))
        self.progress.files_total = len(self.order)
        self.progress.bytes_total = bytes_total
        self.emit()

    def emit(self) -> None:
        local = [o for o in self.outcomes.values() if not o.ingestion_id]
        p = self.progress
        p.files_done = sum(o.status == "unchanged" for o in local)
        p.files_failed = sum(o.status == "failed" for o in local)
        p.chunks_total = p.chunks_done = 0
        for counters in self.ingestions.values():
            p.files_done += counters.documents_done
            p.files_failed += counters.documents_failed
            p.chunks_total += counters.chunks_total
            p.chunks_done += counters.chunks_done
        if self.on_progress is not None:
            self.on_progress(p.model_copy())

    def fail(self, path: Path, reason: str, message: str) -> None:
        self.outcomes[path] = FileOutcome(
            path=path, status="failed", reason=reason, message=message
        )

    def fail_rpc(self, path: Path, err: grpc.aio.AioRpcError) -> None:
        self.fail(path, err.code().name, err.details() or "")

    def is_duplicate(self, path: Path, digest: str) -> bool:
        """A file with the same bytes as one sent before is the same document (its id is
        derived from the content): reported unchanged, not sent again."""
        first = self.first_with_digest.setdefault(digest, path)
        if first == path:
            return False
        self.outcomes[path] = FileOutcome(
            path=path, status="unchanged", message=f"same content as {first}"
        )
        return True

    async def send_batch(self, batch: list[Path]) -> None:
        members: list[Path] = []
        documents: list[rag_pb2.DocumentInput] = []
        for path in batch:
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                self.fail(path, "FILE_UNREADABLE", str(exc))
                continue
            self.progress.bytes_sent += len(data)
            if self.is_duplicate(path, hashlib.sha256(data).hexdigest()):
                continue
            members.append(path)
            documents.append(
                rag_pb2.DocumentInput(data=data, file_name=path.name, source_uri=str(path))
            )
        if not members:
            self.emit()
            return
        try:
            ingestion = await self.rag.ingest_documents(
                self.index_name, documents, chunking=self.chunking, timeout=self.timeout
            )
        except grpc.aio.AioRpcError as err:
            if len(members) == 1 and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                await self.send_upload(members[0])  # over a server's lower message limit
                return
            if len(members) == 1 or err.code() not in _PER_DOCUMENT_CODES:
                for path in members:
                    self.fail_rpc(path, err)
                self.emit()
                return
            for path, document in zip(members, documents, strict=True):
                try:
                    single = await self.rag.ingest_documents(
                        self.index_name, [document], chunking=self.chunking, timeout=self.timeout
                    )
                except grpc.aio.AioRpcError as one_err:
                    if one_err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        await self.send_upload(path)  # over a server's lower message limit
                    else:
                        self.fail_rpc(path, one_err)
                else:
                    self.follow(single, [path])
            self.emit()
            return
        self.follow(ingestion, members)

    async def send_upload(self, path: Path, piece_bytes: int = 1024 * 1024) -> None:
        try:
            digest = await asyncio.to_thread(file_sha256, path)
        except OSError as exc:
            self.fail(path, "FILE_UNREADABLE", str(exc))
            self.emit()
            return
        if self.is_duplicate(path, digest):
            self.emit()
            return

        def sent(n: int) -> None:
            self.progress.bytes_sent += n
            self.sent_of[path] = self.sent_of.get(path, 0) + n
            self.emit()

        try:
            ingestion = await self.rag.upload_file(
                self.index_name,
                path,
                rag_pb2.DocumentInput(file_name=path.name, source_uri=str(path)),
                chunking=self.chunking,
                sha256=digest,
                piece_bytes=piece_bytes,
                on_piece=sent,
                timeout=self.timeout,
            )
        except OSError as exc:
            self.fail(path, "FILE_UNREADABLE", str(exc))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and piece_bytes > _SMALL_PIECE:
                self.progress.bytes_sent -= self.sent_of.pop(path, 0)
                await self.send_upload(path, _SMALL_PIECE)  # a server taking 1 MiB messages
                return
            self.fail_rpc(path, err)
        else:
            self.follow(ingestion, [path])
        self.emit()

    def follow(self, ingestion: rag_pb2.Ingestion, members: list[Path]) -> None:
        for path in members:
            self.outcomes[path] = FileOutcome(path=path, ingestion_id=ingestion.id)
        self.settle(ingestion, members)
        if self.wait:
            self.watchers.append(asyncio.create_task(self.watch(ingestion.id, members)))

    def settle(self, ingestion: rag_pb2.Ingestion, members: list[Path]) -> None:
        """Each file's state from the ingestion's documents (in request order)."""
        self.ingestions[ingestion.id] = ingestion.progress
        for path, document in zip(members, ingestion.documents, strict=False):
            status = _DOCUMENT_STATUS.get(document.status, "pending")
            error = document.error if document.HasField("error") else None
            self.outcomes[path] = FileOutcome(
                path=path,
                status=status,
                document_id=document.document_id,
                ingestion_id=ingestion.id,
                chunks=document.chunks_total,
                reason=error.reason if error else "",
                message=error.message if error else "",
            )
        self.emit()

    async def watch(self, ingestion_id: str, members: list[Path]) -> None:
        after = 0
        for attempt in range(3):
            try:
                async for event in self.rag.watch_ingestion(ingestion_id, after):
                    after = event.event_id
                    if event.HasField("finished"):
                        self.settle(event.finished, members)
                        return
                    self.ingestions[ingestion_id] = event.progress
                    self.emit()
            except grpc.aio.AioRpcError as err:
                if attempt == 2:
                    for path in members:
                        self.fail(path, err.code().name, f"lost ingestion {ingestion_id}")
                    return
                await asyncio.sleep(1.0 + attempt)
        self.settle(await self.rag.get_ingestion(ingestion_id), members)

    async def finish(self) -> IngestReport:
        await asyncio.gather(*self.watchers)
        self.emit()
        return IngestReport(files=[self.outcomes[p] for p in self.order])
