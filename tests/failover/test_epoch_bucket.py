"""Epochs in what a primary writes, and a bucket a newer term owns (real SQLite through the
store's verbs, a real directory bucket, the real uploader):

- every LTX record carries the epoch of the commit gate it was written under (the header's
  node-ID field), and a refused gate records nothing and fails with EIO;
- the uploader of an older epoch uploads nothing to a bucket whose newest file is of a
  newer epoch, and says why; with the bucket's newest file of an older epoch it continues.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio

from litefs_py.ltx import Encoder, Header
from litefs_py.replication.uploader import Uploader
from litefs_py.storage.file import FileReplicaClient
from litefs_py.store.fencing import FencedError
from litefs_py.store.store import Store
from litefs_py.types import TxRange
from tests.store.conftest import store, vfs  # noqa: F401 - the store tests' fixtures
from tests.store.sqlite_vfs import StoreVFS, execute


class Gate:
    def __init__(self, epoch: int, open_: bool = True) -> None:
        self.epoch = epoch
        self.open = open_

    def can_commit(self) -> bool:
        return self.open

    def refusal(self) -> str:
        return "the test closed the gate"


def committed(vfs: StoreVFS, store: Store, epoch: int) -> None:  # noqa: F811
    con = vfs.connect("app.db")
    execute(con, "CREATE TABLE t(v)")  # the first commit creates the database
    store.dbs["app.db"].commit_gate = Gate(epoch)
    for i in range(3):
        execute(con, f"INSERT INTO t VALUES ({i})")


def test_records_carry_the_gate_epoch_and_a_closed_gate_refuses(
        vfs: StoreVFS, store: Store) -> None:  # noqa: F811
    committed(vfs, store, 7)
    db = store.dbs["app.db"]
    ranges = db.ltx.ranges(0)
    assert [db.ltx.header(r).node_id for r in ranges][1:] == [7, 7, 7]
    before = db.pos
    db.commit_gate = Gate(7, open_=False)
    con = vfs.connect("app.db")
    with pytest.raises(Exception) as refused:
        execute(con, "INSERT INTO t VALUES (99)")
    assert db.pos == before and len(db.ltx.ranges(0)) == len(ranges)
    cause: BaseException | None = refused.value
    while cause is not None and not isinstance(cause, FencedError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None or "I/O" in str(refused.value) or "disk" in str(refused.value)
    if cause is not None:
        assert isinstance(cause, OSError) and cause.errno == errno.EIO


def upload_for(store: Store, bucket: Path, epoch: int, seconds: float = 1.5) -> Uploader:  # noqa: F811
    db = store.dbs["app.db"]
    up = Uploader(db, FileReplicaClient(bucket), sync_interval=0.05, epoch=lambda: epoch)

    async def main() -> None:
        with trio.move_on_after(seconds):
            await up.run()

    trio.run(main)
    return up


@pytest.mark.parametrize("theirs,refused", [(9, True), (2, False)])
def test_uploader_never_continues_a_newer_epochs_bucket(
        vfs: StoreVFS, store: Store, tmp_path: Path, theirs: int, refused: bool  # noqa: F811
) -> None:
    committed(vfs, store, 5)
    db = store.dbs["app.db"]
    first = db.ltx.ranges(0)[0]
    bucket = tmp_path / "bucket"
    client = FileReplicaClient(bucket)
    # The bucket's newest file: TXID 1 as another primary (of epoch `theirs`) wrote it.
    data = bytearray(db.ltx.read(first))
    header = Header.decode(bytes(data[:100]))
    assert header.min_txid == 1
    client.write_ltx(0, 1, 1, foreign_with_epoch(bytes(data), theirs), {})
    up = upload_for(store, bucket, 5)
    uploaded = max((i.max_txid for i in client.ltx_files(0)), default=0)
    if refused:
        assert uploaded == 1, "an older epoch's uploader wrote to a newer epoch's bucket"
        assert up.status.last_error is not None and f"epoch {theirs}" in up.status.last_error
    else:
        assert uploaded == db.txid, up.status.last_error
    assert TxRange(1, 1) == first


def foreign_with_epoch(data: bytes, epoch: int) -> bytes:
    """`data` (an LTX file) re-encoded with its header's node ID set to `epoch`."""
    import io

    from litefs_py.ltx import decode_bytes

    decoded = decode_bytes(data, name="foreign")
    h = decoded.header
    header = Header(page_size=h.page_size, commit=h.commit, min_txid=h.min_txid,
                    max_txid=h.max_txid, timestamp=h.timestamp,
                    pre_apply_checksum=h.pre_apply_checksum, node_id=epoch)
    buf = io.BytesIO()
    enc = Encoder(buf, header, name="foreign")
    for pgno, page in decoded.pages:
        enc.encode_page(pgno, page)
    enc.finish(decoded.trailer.post_apply_checksum)
    return buf.getvalue()
