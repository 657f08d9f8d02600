"""Pure LTX codec: LTX v3 encode/decode (both page encodings), v1 decode, checksums,
file names, compaction and apply. No I/O beyond the file objects it is given."""

from .apply import apply_ltx, apply_pages, encode_snapshot
from .checksum import (
    CHECKSUM_FLAG,
    EMPTY_DATABASE_CHECKSUM,
    combine_page_checksums,
    crc64,
    database_checksum,
    lock_pgno,
    page_checksum,
    update_checksum,
)
from .compactor import compact
from .decoder import (
    Decoder,
    PageIndexEntry,
    compiled_codec,
    decode_bytes,
    decode_page_frame,
    read_page_index,
)
from .detect import detect_version, open_decoder
from .encoder import Encoder, encode_bytes
from .errors import (
    ChecksumMismatchError,
    CompactionError,
    FilenameError,
    HeaderError,
    LTXError,
    PageFrameError,
    PageIndexError,
    TrailerError,
    TruncatedError,
)
from .filename import format_filename, format_txid, is_ltx_filename, parse_filename, parse_txid
from .header import (
    FLAG_V1_COMPRESS_LZ4,
    FLAG_V3_NO_CHECKSUM,
    HEADER_SIZE,
    TRAILER_SIZE,
    DecodedFile,
    Header,
    Trailer,
    Version,
)
from .page_encoding import PageEncoding
from .v1 import DecoderV1

__all__ = [
    "CHECKSUM_FLAG",
    "EMPTY_DATABASE_CHECKSUM",
    "FLAG_V1_COMPRESS_LZ4",
    "FLAG_V3_NO_CHECKSUM",
    "HEADER_SIZE",
    "TRAILER_SIZE",
    "ChecksumMismatchError",
    "CompactionError",
    "DecodedFile",
    "Decoder",
    "DecoderV1",
    "Encoder",
    "FilenameError",
    "Header",
    "HeaderError",
    "LTXError",
    "PageEncoding",
    "PageFrameError",
    "PageIndexEntry",
    "PageIndexError",
    "Trailer",
    "TrailerError",
    "TruncatedError",
    "Version",
    "apply_ltx",
    "apply_pages",
    "combine_page_checksums",
    "compact",
    "compiled_codec",
    "crc64",
    "database_checksum",
    "decode_bytes",
    "decode_page_frame",
    "detect_version",
    "encode_bytes",
    "encode_snapshot",
    "format_filename",
    "format_txid",
    "is_ltx_filename",
    "lock_pgno",
    "open_decoder",
    "page_checksum",
    "parse_filename",
    "parse_txid",
    "read_page_index",
    "update_checksum",
]
