"""The replication stream's wire format (docs/replication-protocol.md, protocol version 1).

A replica POSTs its positions to `/litefs/v1/stream`; the response body is a sequence of
frames until either side closes:

    frame := length (u32, big-endian) | header (JSON object, `length` bytes, UTF-8)
             | payload (`header["size"]` bytes, absent when size is 0)

Frame types (`header["type"]`): "hello" (first; protocol version and the primary's
positions), "ltx" (one LTX file for `db`; a snapshot when `snapshot` is true, then `reason`
says why and `checksum` is the database checksum after it), "heartbeat" (the primary's
positions, sent when there was nothing else to send for a second).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from ..store.store import valid_db_name
from ..types import Pos

PROTOCOL_VERSION = 1
STREAM_PATH = "/litefs/v1/stream"
INFO_PATH = "/litefs/v1/info"
CONTENT_TYPE = "application/x-litefs-stream"
MAX_HEADER = 1 << 20  # a frame header larger than this is a protocol error
MAX_REQUEST = 1 << 20  # a stream request body larger than this is refused
_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something this version of the protocol does not allow."""


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    header = {**header, "size": len(payload)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    return _LEN.pack(len(raw)) + raw + payload


@dataclass(slots=True)
class Frame:
    header: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        return str(self.header.get("type", ""))


class FrameReader:
    """Incremental decoder: feed() bytes as they arrive, then take frames()."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        while len(buf) >= 4:
            (n,) = _LEN.unpack_from(buf)
            if n > MAX_HEADER:
                raise ProtocolError(f"frame header of {n} bytes (at most {MAX_HEADER})")
            if len(buf) < 4 + n:
                break
            try:
                header = json.loads(bytes(buf[4:4 + n]))
            except ValueError as exc:
                raise ProtocolError(f"frame header is not JSON: {exc}") from None
            if not isinstance(header, dict):
                raise ProtocolError("frame header is not a JSON object")
            size = header.get("size", 0)
            if not isinstance(size, int) or size < 0:
                raise ProtocolError(f"bad frame size {size!r}")
            if len(buf) < 4 + n + size:
                break
            frames.append(Frame(header, bytes(buf[4 + n:4 + n + size])))
            del buf[:4 + n + size]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


def format_positions(positions: dict[str, Pos]) -> dict[str, dict[str, str]]:
    return {name: {"txid": f"{txid:016x}", "checksum": f"{checksum:016x}"}
            for name, (txid, checksum) in positions.items()}


MAX_DBS = 100_000  # positions in one request or hello
_HEX64 = re.compile(r"[0-9a-fA-F]{1,16}")


def parse_positions(value: object) -> dict[str, Pos]:
    """The `dbs` object of a request or hello: name -> position. Names must be database
    names and TXIDs/checksums 1 to 16 hex digits (a u64): anything else is a ProtocolError
    (the server answers 400), never a position that means something else."""
    if not isinstance(value, dict):
        raise ProtocolError("'dbs' must be an object of database positions")
    if len(value) > MAX_DBS:
        raise ProtocolError(f"'dbs' has {len(value)} entries (at most {MAX_DBS})")
    out: dict[str, Pos] = {}
    for name, pos in value.items():
        if not valid_db_name(str(name)):
            raise ProtocolError(f"invalid database name {str(name)[:80]!r}")
        if not isinstance(pos, dict):
            raise ProtocolError(f"position of {name!r} must be an object")
        txid, checksum = pos.get("txid", "0"), pos.get("checksum", "0")
        if not all(isinstance(v, str) and _HEX64.fullmatch(v) for v in (txid, checksum)):
            raise ProtocolError(f"position of {name!r} must be 'txid' and 'checksum' of 1 to "
                                "16 hexadecimal digits")
        out[str(name)] = Pos(int(txid, 16), int(checksum, 16))
    return out
