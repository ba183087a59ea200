import datetime

from ...buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import access_pb2 as _access_pb2
from . import message_pb2 as _message_pb2
from . import run_pb2 as _run_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DistanceMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTANCE_METRIC_UNSPECIFIED: _ClassVar[DistanceMetric]
    DISTANCE_METRIC_COSINE: _ClassVar[DistanceMetric]
    DISTANCE_METRIC_L2: _ClassVar[DistanceMetric]
    DISTANCE_METRIC_INNER_PRODUCT: _ClassVar[DistanceMetric]

class DocumentFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_FORMAT_UNSPECIFIED: _ClassVar[DocumentFormat]
    DOCUMENT_FORMAT_PLAIN_TEXT: _ClassVar[DocumentFormat]
    DOCUMENT_FORMAT_MARKDOWN: _ClassVar[DocumentFormat]
    DOCUMENT_FORMAT_HTML: _ClassVar[DocumentFormat]
    DOCUMENT_FORMAT_PDF: _ClassVar[DocumentFormat]
    DOCUMENT_FORMAT_DOCX: _ClassVar[DocumentFormat]

class ChunkingStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHUNKING_STRATEGY_UNSPECIFIED: _ClassVar[ChunkingStrategy]
    CHUNKING_STRATEGY_RECURSIVE: _ClassVar[ChunkingStrategy]
    CHUNKING_STRATEGY_SENTENCE: _ClassVar[ChunkingStrategy]
    CHUNKING_STRATEGY_TOKEN: _ClassVar[ChunkingStrategy]
    CHUNKING_STRATEGY_MARKDOWN: _ClassVar[ChunkingStrategy]

class DocumentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOCUMENT_STATUS_UNSPECIFIED: _ClassVar[DocumentStatus]
    DOCUMENT_STATUS_PROCESSING: _ClassVar[DocumentStatus]
    DOCUMENT_STATUS_READY: _ClassVar[DocumentStatus]
    DOCUMENT_STATUS_FAILED: _ClassVar[DocumentStatus]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_VECTOR: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]

class RerankMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RERANK_METHOD_UNSPECIFIED: _ClassVar[RerankMethod]
    RERANK_METHOD_SIGNALS: _ClassVar[RerankMethod]
    RERANK_METHOD_LLM: _ClassVar[RerankMethod]

class IngestionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INGESTION_STATUS_UNSPECIFIED: _ClassVar[IngestionStatus]
    INGESTION_STATUS_PENDING: _ClassVar[IngestionStatus]
    INGESTION_STATUS_RUNNING: _ClassVar[IngestionStatus]
    INGESTION_STATUS_SUCCEEDED: _ClassVar[IngestionStatus]
    INGESTION_STATUS_PARTIALLY_SUCCEEDED: _ClassVar[IngestionStatus]
    INGESTION_STATUS_FAILED: _ClassVar[IngestionStatus]
    INGESTION_STATUS_CANCELED: _ClassVar[IngestionStatus]

class IngestionDocumentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INGESTION_DOCUMENT_STATUS_UNSPECIFIED: _ClassVar[IngestionDocumentStatus]
    INGESTION_DOCUMENT_STATUS_PENDING: _ClassVar[IngestionDocumentStatus]
    INGESTION_DOCUMENT_STATUS_EXTRACTING: _ClassVar[IngestionDocumentStatus]
    INGESTION_DOCUMENT_STATUS_CHUNKING: _ClassVar[IngestionDocumentStatus]
    INGESTION_DOCUMENT_STATUS_EMBEDDING: _ClassVar[IngestionDocumentStatus]
    INGESTION_DOCUMENT_STATUS_SUCCEEDED: _ClassVar[IngestionDocumentStatus]
    INGESTION_DOCUMENT_STATUS_UNCHANGED: _ClassVar[IngestionDocumentStatus]
    INGESTION_DOCUMENT_STATUS_FAILED: _ClassVar[IngestionDocumentStatus]
    INGESTION_DOCUMENT_STATUS_CANCELED: _ClassVar[IngestionDocumentStatus]

class ContextOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTEXT_ORDER_UNSPECIFIED: _ClassVar[ContextOrder]
    CONTEXT_ORDER_SCORE: _ClassVar[ContextOrder]
    CONTEXT_ORDER_POSITION: _ClassVar[ContextOrder]
DISTANCE_METRIC_UNSPECIFIED: DistanceMetric
DISTANCE_METRIC_COSINE: DistanceMetric
DISTANCE_METRIC_L2: DistanceMetric
DISTANCE_METRIC_INNER_PRODUCT: DistanceMetric
DOCUMENT_FORMAT_UNSPECIFIED: DocumentFormat
DOCUMENT_FORMAT_PLAIN_TEXT: DocumentFormat
DOCUMENT_FORMAT_MARKDOWN: DocumentFormat
DOCUMENT_FORMAT_HTML: DocumentFormat
DOCUMENT_FORMAT_PDF: DocumentFormat
DOCUMENT_FORMAT_DOCX: DocumentFormat
CHUNKING_STRATEGY_UNSPECIFIED: ChunkingStrategy
CHUNKING_STRATEGY_RECURSIVE: ChunkingStrategy
CHUNKING_STRATEGY_SENTENCE: ChunkingStrategy
CHUNKING_STRATEGY_TOKEN: ChunkingStrategy
CHUNKING_STRATEGY_MARKDOWN: ChunkingStrategy
DOCUMENT_STATUS_UNSPECIFIED: DocumentStatus
DOCUMENT_STATUS_PROCESSING: DocumentStatus
DOCUMENT_STATUS_READY: DocumentStatus
DOCUMENT_STATUS_FAILED: DocumentStatus
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_VECTOR: SearchMode
SEARCH_MODE_HYBRID: SearchMode
RERANK_METHOD_UNSPECIFIED: RerankMethod
RERANK_METHOD_SIGNALS: RerankMethod
RERANK_METHOD_LLM: RerankMethod
INGESTION_STATUS_UNSPECIFIED: IngestionStatus
INGESTION_STATUS_PENDING: IngestionStatus
INGESTION_STATUS_RUNNING: IngestionStatus
INGESTION_STATUS_SUCCEEDED: IngestionStatus
INGESTION_STATUS_PARTIALLY_SUCCEEDED: IngestionStatus
INGESTION_STATUS_FAILED: IngestionStatus
INGESTION_STATUS_CANCELED: IngestionStatus
INGESTION_DOCUMENT_STATUS_UNSPECIFIED: IngestionDocumentStatus
INGESTION_DOCUMENT_STATUS_PENDING: IngestionDocumentStatus
INGESTION_DOCUMENT_STATUS_EXTRACTING: IngestionDocumentStatus
INGESTION_DOCUMENT_STATUS_CHUNKING: IngestionDocumentStatus
INGESTION_DOCUMENT_STATUS_EMBEDDING: IngestionDocumentStatus
INGESTION_DOCUMENT_STATUS_SUCCEEDED: IngestionDocumentStatus
INGESTION_DOCUMENT_STATUS_UNCHANGED: IngestionDocumentStatus
INGESTION_DOCUMENT_STATUS_FAILED: IngestionDocumentStatus
INGESTION_DOCUMENT_STATUS_CANCELED: IngestionDocumentStatus
CONTEXT_ORDER_UNSPECIFIED: ContextOrder
CONTEXT_ORDER_SCORE: ContextOrder
CONTEXT_ORDER_POSITION: ContextOrder

class Index(_message.Message):
    __slots__ = ("name", "description", "embedding_model", "dimension", "metric", "hnsw", "text_search_config", "metadata", "document_count", "chunk_count", "create_time", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    TEXT_SEARCH_CONFIG_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    embedding_model: str
    dimension: int
    metric: DistanceMetric
    hnsw: HnswOptions
    text_search_config: str
    metadata: _struct_pb2.Struct
    document_count: int
    chunk_count: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., embedding_model: _Optional[str] = ..., dimension: _Optional[int] = ..., metric: _Optional[_Union[DistanceMetric, str]] = ..., hnsw: _Optional[_Union[HnswOptions, _Mapping]] = ..., text_search_config: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., document_count: _Optional[int] = ..., chunk_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HnswOptions(_message.Message):
    __slots__ = ("m", "ef_construction")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construction: int
    def __init__(self, m: _Optional[int] = ..., ef_construction: _Optional[int] = ...) -> None: ...

class DocumentInput(_message.Message):
    __slots__ = ("document_id", "data", "text", "format", "file_name", "title", "source_uri", "metadata")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    data: bytes
    text: str
    format: DocumentFormat
    file_name: str
    title: str
    source_uri: str
    metadata: _struct_pb2.Struct
    def __init__(self, document_id: _Optional[str] = ..., data: _Optional[bytes] = ..., text: _Optional[str] = ..., format: _Optional[_Union[DocumentFormat, str]] = ..., file_name: _Optional[str] = ..., title: _Optional[str] = ..., source_uri: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ChunkingOptions(_message.Message):
    __slots__ = ("strategy", "chunk_size", "chunk_overlap", "separators", "token_encoding")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    SEPARATORS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ENCODING_FIELD_NUMBER: _ClassVar[int]
    strategy: ChunkingStrategy
    chunk_size: int
    chunk_overlap: int
    separators: _containers.RepeatedScalarFieldContainer[str]
    token_encoding: str
    def __init__(self, strategy: _Optional[_Union[ChunkingStrategy, str]] = ..., chunk_size: _Optional[int] = ..., chunk_overlap: _Optional[int] = ..., separators: _Optional[_Iterable[str]] = ..., token_encoding: _Optional[str] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "index_name", "title", "file_name", "source_uri", "format", "metadata", "content_hash", "size_bytes", "page_count", "chunk_count", "status", "error", "ingestion_id", "create_time", "update_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INGESTION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    index_name: str
    title: str
    file_name: str
    source_uri: str
    format: DocumentFormat
    metadata: _struct_pb2.Struct
    content_hash: str
    size_bytes: int
    page_count: int
    chunk_count: int
    status: DocumentStatus
    error: _run_pb2.RunError
    ingestion_id: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., index_name: _Optional[str] = ..., title: _Optional[str] = ..., file_name: _Optional[str] = ..., source_uri: _Optional[str] = ..., format: _Optional[_Union[DocumentFormat, str]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., content_hash: _Optional[str] = ..., size_bytes: _Optional[int] = ..., page_count: _Optional[int] = ..., chunk_count: _Optional[int] = ..., status: _Optional[_Union[DocumentStatus, str]] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., ingestion_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("id", "document_id", "position", "text", "page", "end_page", "heading_path", "start_char", "end_char", "token_count", "metadata")
    ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    END_PAGE_FIELD_NUMBER: _ClassVar[int]
    HEADING_PATH_FIELD_NUMBER: _ClassVar[int]
    START_CHAR_FIELD_NUMBER: _ClassVar[int]
    END_CHAR_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    document_id: str
    position: int
    text: str
    page: int
    end_page: int
    heading_path: _containers.RepeatedScalarFieldContainer[str]
    start_char: int
    end_char: int
    token_count: int
    metadata: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., document_id: _Optional[str] = ..., position: _Optional[int] = ..., text: _Optional[str] = ..., page: _Optional[int] = ..., end_page: _Optional[int] = ..., heading_path: _Optional[_Iterable[str]] = ..., start_char: _Optional[int] = ..., end_char: _Optional[int] = ..., token_count: _Optional[int] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Citation(_message.Message):
    __slots__ = ("number", "chunk_id", "document_id", "title", "source_uri", "page", "heading_path", "position", "snippet")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_URI_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    HEADING_PATH_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    number: int
    chunk_id: str
    document_id: str
    title: str
    source_uri: str
    page: int
    heading_path: _containers.RepeatedScalarFieldContainer[str]
    position: int
    snippet: str
    def __init__(self, number: _Optional[int] = ..., chunk_id: _Optional[str] = ..., document_id: _Optional[str] = ..., title: _Optional[str] = ..., source_uri: _Optional[str] = ..., page: _Optional[int] = ..., heading_path: _Optional[_Iterable[str]] = ..., position: _Optional[int] = ..., snippet: _Optional[str] = ...) -> None: ...

class ScoredChunk(_message.Message):
    __slots__ = ("chunk", "score", "details", "citation")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    CITATION_FIELD_NUMBER: _ClassVar[int]
    chunk: Chunk
    score: float
    details: ScoreDetails
    citation: Citation
    def __init__(self, chunk: _Optional[_Union[Chunk, _Mapping]] = ..., score: _Optional[float] = ..., details: _Optional[_Union[ScoreDetails, _Mapping]] = ..., citation: _Optional[_Union[Citation, _Mapping]] = ...) -> None: ...

class ScoreDetails(_message.Message):
    __slots__ = ("vector_score", "vector_rank", "lexical_score", "lexical_rank", "fusion_score", "rerank_score")
    VECTOR_SCORE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_RANK_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_RANK_FIELD_NUMBER: _ClassVar[int]
    FUSION_SCORE_FIELD_NUMBER: _ClassVar[int]
    RERANK_SCORE_FIELD_NUMBER: _ClassVar[int]
    vector_score: float
    vector_rank: int
    lexical_score: float
    lexical_rank: int
    fusion_score: float
    rerank_score: float
    def __init__(self, vector_score: _Optional[float] = ..., vector_rank: _Optional[int] = ..., lexical_score: _Optional[float] = ..., lexical_rank: _Optional[int] = ..., fusion_score: _Optional[float] = ..., rerank_score: _Optional[float] = ...) -> None: ...

class MetadataFilter(_message.Message):
    __slots__ = ("condition", "all", "any")
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    condition: MetadataCondition
    all: MetadataFilterList
    any: MetadataFilterList
    def __init__(self, condition: _Optional[_Union[MetadataCondition, _Mapping]] = ..., all: _Optional[_Union[MetadataFilterList, _Mapping]] = ..., any: _Optional[_Union[MetadataFilterList, _Mapping]] = ...) -> None: ...

class MetadataFilterList(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[MetadataFilter]
    def __init__(self, filters: _Optional[_Iterable[_Union[MetadataFilter, _Mapping]]] = ...) -> None: ...

class MetadataCondition(_message.Message):
    __slots__ = ("field", "equals", "not_equals", "any_of", "none_of", "range", "exists")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    NOT_EQUALS_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NONE_OF_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    field: str
    equals: _struct_pb2.Value
    not_equals: _struct_pb2.Value
    any_of: _struct_pb2.ListValue
    none_of: _struct_pb2.ListValue
    range: MetadataRange
    exists: bool
    def __init__(self, field: _Optional[str] = ..., equals: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., not_equals: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., any_of: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., none_of: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., range: _Optional[_Union[MetadataRange, _Mapping]] = ..., exists: _Optional[bool] = ...) -> None: ...

class MetadataRange(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: _struct_pb2.Value
    gte: _struct_pb2.Value
    lt: _struct_pb2.Value
    lte: _struct_pb2.Value
    def __init__(self, gt: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., gte: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., lt: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., lte: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class HybridOptions(_message.Message):
    __slots__ = ("rrf_k", "vector_weight", "lexical_weight", "candidates")
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    VECTOR_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    rrf_k: int
    vector_weight: float
    lexical_weight: float
    candidates: int
    def __init__(self, rrf_k: _Optional[int] = ..., vector_weight: _Optional[float] = ..., lexical_weight: _Optional[float] = ..., candidates: _Optional[int] = ...) -> None: ...

class RerankOptions(_message.Message):
    __slots__ = ("method", "semantic_weight", "lexical_weight", "position_weight", "model", "candidates")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    POSITION_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    method: RerankMethod
    semantic_weight: float
    lexical_weight: float
    position_weight: float
    model: str
    candidates: int
    def __init__(self, method: _Optional[_Union[RerankMethod, str]] = ..., semantic_weight: _Optional[float] = ..., lexical_weight: _Optional[float] = ..., position_weight: _Optional[float] = ..., model: _Optional[str] = ..., candidates: _Optional[int] = ...) -> None: ...

class RetrievalOptions(_message.Message):
    __slots__ = ("top_k", "filter", "mode", "hybrid", "rerank", "min_score")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    filter: MetadataFilter
    mode: SearchMode
    hybrid: HybridOptions
    rerank: RerankOptions
    min_score: float
    def __init__(self, top_k: _Optional[int] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., hybrid: _Optional[_Union[HybridOptions, _Mapping]] = ..., rerank: _Optional[_Union[RerankOptions, _Mapping]] = ..., min_score: _Optional[float] = ...) -> None: ...

class CreateIndexRequest(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: Index
    def __init__(self, index: _Optional[_Union[Index, _Mapping]] = ...) -> None: ...

class CreateIndexResponse(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: Index
    def __init__(self, index: _Optional[_Union[Index, _Mapping]] = ...) -> None: ...

class GetIndexRequest(_message.Message):
    __slots__ = ("index_name",)
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    def __init__(self, index_name: _Optional[str] = ...) -> None: ...

class GetIndexResponse(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: Index
    def __init__(self, index: _Optional[_Union[Index, _Mapping]] = ...) -> None: ...

class ListIndexesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListIndexesResponse(_message.Message):
    __slots__ = ("indexes", "next_page_token")
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[Index]
    next_page_token: str
    def __init__(self, indexes: _Optional[_Iterable[_Union[Index, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteIndexRequest(_message.Message):
    __slots__ = ("index_name",)
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    def __init__(self, index_name: _Optional[str] = ...) -> None: ...

class DeleteIndexResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IngestDocumentsRequest(_message.Message):
    __slots__ = ("index_name", "documents", "chunking", "client_ingestion_id")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    CLIENT_INGESTION_ID_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    documents: _containers.RepeatedCompositeFieldContainer[DocumentInput]
    chunking: ChunkingOptions
    client_ingestion_id: str
    def __init__(self, index_name: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[DocumentInput, _Mapping]]] = ..., chunking: _Optional[_Union[ChunkingOptions, _Mapping]] = ..., client_ingestion_id: _Optional[str] = ...) -> None: ...

class IngestDocumentsResponse(_message.Message):
    __slots__ = ("ingestion",)
    INGESTION_FIELD_NUMBER: _ClassVar[int]
    ingestion: Ingestion
    def __init__(self, ingestion: _Optional[_Union[Ingestion, _Mapping]] = ...) -> None: ...

class UploadDocumentRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadDocumentHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadDocumentHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadDocumentHeader(_message.Message):
    __slots__ = ("index_name", "document", "chunking", "size_bytes", "sha256", "client_ingestion_id")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CLIENT_INGESTION_ID_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    document: DocumentInput
    chunking: ChunkingOptions
    size_bytes: int
    sha256: str
    client_ingestion_id: str
    def __init__(self, index_name: _Optional[str] = ..., document: _Optional[_Union[DocumentInput, _Mapping]] = ..., chunking: _Optional[_Union[ChunkingOptions, _Mapping]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., client_ingestion_id: _Optional[str] = ...) -> None: ...

class UploadDocumentResponse(_message.Message):
    __slots__ = ("ingestion",)
    INGESTION_FIELD_NUMBER: _ClassVar[int]
    ingestion: Ingestion
    def __init__(self, ingestion: _Optional[_Union[Ingestion, _Mapping]] = ...) -> None: ...

class IngestionProgress(_message.Message):
    __slots__ = ("documents_total", "documents_done", "documents_failed", "chunks_total", "chunks_done")
    DOCUMENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_DONE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    documents_total: int
    documents_done: int
    documents_failed: int
    chunks_total: int
    chunks_done: int
    def __init__(self, documents_total: _Optional[int] = ..., documents_done: _Optional[int] = ..., documents_failed: _Optional[int] = ..., chunks_total: _Optional[int] = ..., chunks_done: _Optional[int] = ...) -> None: ...

class IngestionDocument(_message.Message):
    __slots__ = ("document_id", "file_name", "status", "chunks_total", "chunks_done", "page_count", "error")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    file_name: str
    status: IngestionDocumentStatus
    chunks_total: int
    chunks_done: int
    page_count: int
    error: _run_pb2.RunError
    def __init__(self, document_id: _Optional[str] = ..., file_name: _Optional[str] = ..., status: _Optional[_Union[IngestionDocumentStatus, str]] = ..., chunks_total: _Optional[int] = ..., chunks_done: _Optional[int] = ..., page_count: _Optional[int] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ...) -> None: ...

class Ingestion(_message.Message):
    __slots__ = ("id", "index_name", "status", "progress", "documents", "chunking", "error", "create_time", "start_time", "end_time", "last_event_id", "temporal_workflow_id", "temporal_run_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    index_name: str
    status: IngestionStatus
    progress: IngestionProgress
    documents: _containers.RepeatedCompositeFieldContainer[IngestionDocument]
    chunking: ChunkingOptions
    error: _run_pb2.RunError
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    last_event_id: int
    temporal_workflow_id: str
    temporal_run_id: str
    def __init__(self, id: _Optional[str] = ..., index_name: _Optional[str] = ..., status: _Optional[_Union[IngestionStatus, str]] = ..., progress: _Optional[_Union[IngestionProgress, _Mapping]] = ..., documents: _Optional[_Iterable[_Union[IngestionDocument, _Mapping]]] = ..., chunking: _Optional[_Union[ChunkingOptions, _Mapping]] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_event_id: _Optional[int] = ..., temporal_workflow_id: _Optional[str] = ..., temporal_run_id: _Optional[str] = ...) -> None: ...

class IngestionEvent(_message.Message):
    __slots__ = ("event_id", "ingestion_id", "time", "progress", "progress_changed", "document", "finished", "keep_alive")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    INGESTION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    ingestion_id: str
    time: _timestamp_pb2.Timestamp
    progress: IngestionProgress
    progress_changed: IngestionProgressChanged
    document: IngestionDocument
    finished: Ingestion
    keep_alive: _run_pb2.StreamKeepAlive
    def __init__(self, event_id: _Optional[int] = ..., ingestion_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[IngestionProgress, _Mapping]] = ..., progress_changed: _Optional[_Union[IngestionProgressChanged, _Mapping]] = ..., document: _Optional[_Union[IngestionDocument, _Mapping]] = ..., finished: _Optional[_Union[Ingestion, _Mapping]] = ..., keep_alive: _Optional[_Union[_run_pb2.StreamKeepAlive, _Mapping]] = ...) -> None: ...

class IngestionProgressChanged(_message.Message):
    __slots__ = ("document_id",)
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    def __init__(self, document_id: _Optional[str] = ...) -> None: ...

class GetIngestionRequest(_message.Message):
    __slots__ = ("ingestion_id",)
    INGESTION_ID_FIELD_NUMBER: _ClassVar[int]
    ingestion_id: str
    def __init__(self, ingestion_id: _Optional[str] = ...) -> None: ...

class GetIngestionResponse(_message.Message):
    __slots__ = ("ingestion",)
    INGESTION_FIELD_NUMBER: _ClassVar[int]
    ingestion: Ingestion
    def __init__(self, ingestion: _Optional[_Union[Ingestion, _Mapping]] = ...) -> None: ...

class ListIngestionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "index_name", "statuses")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    index_name: str
    statuses: _containers.RepeatedScalarFieldContainer[IngestionStatus]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., index_name: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[IngestionStatus, str]]] = ...) -> None: ...

class ListIngestionsResponse(_message.Message):
    __slots__ = ("ingestions", "next_page_token")
    INGESTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ingestions: _containers.RepeatedCompositeFieldContainer[Ingestion]
    next_page_token: str
    def __init__(self, ingestions: _Optional[_Iterable[_Union[Ingestion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchIngestionRequest(_message.Message):
    __slots__ = ("ingestion_id", "after_event_id")
    INGESTION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ingestion_id: str
    after_event_id: int
    def __init__(self, ingestion_id: _Optional[str] = ..., after_event_id: _Optional[int] = ...) -> None: ...

class WatchIngestionResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: IngestionEvent
    def __init__(self, event: _Optional[_Union[IngestionEvent, _Mapping]] = ...) -> None: ...

class CancelIngestionRequest(_message.Message):
    __slots__ = ("ingestion_id",)
    INGESTION_ID_FIELD_NUMBER: _ClassVar[int]
    ingestion_id: str
    def __init__(self, ingestion_id: _Optional[str] = ...) -> None: ...

class CancelIngestionResponse(_message.Message):
    __slots__ = ("ingestion",)
    INGESTION_FIELD_NUMBER: _ClassVar[int]
    ingestion: Ingestion
    def __init__(self, ingestion: _Optional[_Union[Ingestion, _Mapping]] = ...) -> None: ...

class GetDocumentRequest(_message.Message):
    __slots__ = ("index_name", "document_id")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    document_id: str
    def __init__(self, index_name: _Optional[str] = ..., document_id: _Optional[str] = ...) -> None: ...

class GetDocumentResponse(_message.Message):
    __slots__ = ("document",)
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    document: Document
    def __init__(self, document: _Optional[_Union[Document, _Mapping]] = ...) -> None: ...

class ListDocumentsRequest(_message.Message):
    __slots__ = ("index_name", "page_size", "page_token", "filter", "statuses")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    page_size: int
    page_token: str
    filter: MetadataFilter
    statuses: _containers.RepeatedScalarFieldContainer[DocumentStatus]
    def __init__(self, index_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ..., statuses: _Optional[_Iterable[_Union[DocumentStatus, str]]] = ...) -> None: ...

class ListDocumentsResponse(_message.Message):
    __slots__ = ("documents", "next_page_token")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    next_page_token: str
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDocumentRequest(_message.Message):
    __slots__ = ("index_name", "document_id")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    document_id: str
    def __init__(self, index_name: _Optional[str] = ..., document_id: _Optional[str] = ...) -> None: ...

class DeleteDocumentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("index_name", "query", "retrieval")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    query: str
    retrieval: RetrievalOptions
    def __init__(self, index_name: _Optional[str] = ..., query: _Optional[str] = ..., retrieval: _Optional[_Union[RetrievalOptions, _Mapping]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("results", "embedding_model")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoredChunk]
    embedding_model: str
    def __init__(self, results: _Optional[_Iterable[_Union[ScoredChunk, _Mapping]]] = ..., embedding_model: _Optional[str] = ...) -> None: ...

class ContextOptions(_message.Message):
    __slots__ = ("order", "max_tokens")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    order: ContextOrder
    max_tokens: int
    def __init__(self, order: _Optional[_Union[ContextOrder, str]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class AnswerRequest(_message.Message):
    __slots__ = ("index_name", "query", "retrieval", "context", "model", "model_settings", "instructions", "client_answer_id")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    query: str
    retrieval: RetrievalOptions
    context: ContextOptions
    model: str
    model_settings: _run_pb2.ModelSettings
    instructions: str
    client_answer_id: str
    def __init__(self, index_name: _Optional[str] = ..., query: _Optional[str] = ..., retrieval: _Optional[_Union[RetrievalOptions, _Mapping]] = ..., context: _Optional[_Union[ContextOptions, _Mapping]] = ..., model: _Optional[str] = ..., model_settings: _Optional[_Union[_run_pb2.ModelSettings, _Mapping]] = ..., instructions: _Optional[str] = ..., client_answer_id: _Optional[str] = ...) -> None: ...

class AnswerResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AnswerEvent
    def __init__(self, event: _Optional[_Union[AnswerEvent, _Mapping]] = ...) -> None: ...

class RagAnswer(_message.Message):
    __slots__ = ("id", "index_name", "query", "status", "text", "citations", "context", "usage", "model", "error", "create_time", "end_time", "last_event_id", "temporal_workflow_id", "temporal_run_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPORAL_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    index_name: str
    query: str
    status: _run_pb2.RunStatus
    text: str
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    context: _containers.RepeatedCompositeFieldContainer[ScoredChunk]
    usage: _message_pb2.Usage
    model: str
    error: _run_pb2.RunError
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    last_event_id: int
    temporal_workflow_id: str
    temporal_run_id: str
    def __init__(self, id: _Optional[str] = ..., index_name: _Optional[str] = ..., query: _Optional[str] = ..., status: _Optional[_Union[_run_pb2.RunStatus, str]] = ..., text: _Optional[str] = ..., citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ..., context: _Optional[_Iterable[_Union[ScoredChunk, _Mapping]]] = ..., usage: _Optional[_Union[_message_pb2.Usage, _Mapping]] = ..., model: _Optional[str] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_event_id: _Optional[int] = ..., temporal_workflow_id: _Optional[str] = ..., temporal_run_id: _Optional[str] = ...) -> None: ...

class AnswerEvent(_message.Message):
    __slots__ = ("event_id", "answer_id", "time", "started", "retrieval", "text_delta", "citation", "usage", "retrying", "finished", "failed", "keep_alive")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    CITATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYING_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    answer_id: str
    time: _timestamp_pb2.Timestamp
    started: AnswerStarted
    retrieval: AnswerRetrieval
    text_delta: _run_pb2.TextDelta
    citation: Citation
    usage: _message_pb2.Usage
    retrying: AnswerRetrying
    finished: RagAnswer
    failed: _run_pb2.RunError
    keep_alive: _run_pb2.StreamKeepAlive
    def __init__(self, event_id: _Optional[int] = ..., answer_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started: _Optional[_Union[AnswerStarted, _Mapping]] = ..., retrieval: _Optional[_Union[AnswerRetrieval, _Mapping]] = ..., text_delta: _Optional[_Union[_run_pb2.TextDelta, _Mapping]] = ..., citation: _Optional[_Union[Citation, _Mapping]] = ..., usage: _Optional[_Union[_message_pb2.Usage, _Mapping]] = ..., retrying: _Optional[_Union[AnswerRetrying, _Mapping]] = ..., finished: _Optional[_Union[RagAnswer, _Mapping]] = ..., failed: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., keep_alive: _Optional[_Union[_run_pb2.StreamKeepAlive, _Mapping]] = ...) -> None: ...

class AnswerStarted(_message.Message):
    __slots__ = ("index_name", "query", "model")
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    index_name: str
    query: str
    model: str
    def __init__(self, index_name: _Optional[str] = ..., query: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class AnswerRetrieval(_message.Message):
    __slots__ = ("chunks", "retrieved_count", "context_tokens")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[ScoredChunk]
    retrieved_count: int
    context_tokens: int
    def __init__(self, chunks: _Optional[_Iterable[_Union[ScoredChunk, _Mapping]]] = ..., retrieved_count: _Optional[int] = ..., context_tokens: _Optional[int] = ...) -> None: ...

class AnswerRetrying(_message.Message):
    __slots__ = ("attempt", "error", "backoff")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    error: _run_pb2.RunError
    backoff: _duration_pb2.Duration
    def __init__(self, attempt: _Optional[int] = ..., error: _Optional[_Union[_run_pb2.RunError, _Mapping]] = ..., backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetAnswerRequest(_message.Message):
    __slots__ = ("answer_id",)
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    answer_id: str
    def __init__(self, answer_id: _Optional[str] = ...) -> None: ...

class GetAnswerResponse(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: RagAnswer
    def __init__(self, answer: _Optional[_Union[RagAnswer, _Mapping]] = ...) -> None: ...

class WatchAnswerRequest(_message.Message):
    __slots__ = ("answer_id", "after_event_id")
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    answer_id: str
    after_event_id: int
    def __init__(self, answer_id: _Optional[str] = ..., after_event_id: _Optional[int] = ...) -> None: ...

class WatchAnswerResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AnswerEvent
    def __init__(self, event: _Optional[_Union[AnswerEvent, _Mapping]] = ...) -> None: ...

class CancelAnswerRequest(_message.Message):
    __slots__ = ("answer_id",)
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    answer_id: str
    def __init__(self, answer_id: _Optional[str] = ...) -> None: ...

class CancelAnswerResponse(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: RagAnswer
    def __init__(self, answer: _Optional[_Union[RagAnswer, _Mapping]] = ...) -> None: ...
