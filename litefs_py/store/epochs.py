"""Where each primary term's records begin, per database: the epoch history.

    [(epoch, first TXID written in that epoch), ...]   epochs ascending

A primary appends its own entry when it takes the lease (`begin`); a replica takes its
primary's history from the stream (`adopt`). Histories of the nodes of one cluster therefore
agree except for what a node wrote in a term the others never heard of, which is exactly
what `fork_point` finds (the scheme of Kafka's leader-epoch checkpoints): a node whose last
epoch is E, compared with a primary whose first epoch after E began at TXID s, holds records
the primary's history does not have iff its own position is at or past s — those records,
from s on, are the ones to quarantine.

Kept in `DATA/dbs/<name>/epochs` (JSON, replaced atomically). An empty history (data from
before leases, or restored from a bucket) claims nothing: positions and checksums decide.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple


class EpochStart(NamedTuple):
    epoch: int
    txid: int  # the first TXID written in this epoch


class EpochHistory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[EpochStart] | None = None  # loaded on first use

    @property
    def entries(self) -> list[EpochStart]:
        if self._entries is None:
            self._entries = self._load()
        return list(self._entries)

    @property
    def last_epoch(self) -> int:
        entries = self.entries
        return entries[-1].epoch if entries else 0

    def _load(self) -> list[EpochStart]:
        try:
            raw = json.loads(self.path.read_text())
            return normalized(EpochStart(int(e), int(t)) for e, t in raw["epochs"])
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError):
            # A damaged history claims nothing (positions and checksums still protect);
            # the next begin/adopt rewrites it.
            return []

    def _save(self, entries: list[EpochStart]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"epochs": [list(e) for e in entries]}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._entries = entries

    def begin(self, epoch: int, txid: int) -> None:
        """This node became primary in `epoch`; its first record will be `txid`."""
        entries = [e for e in self.entries if e.epoch < epoch]
        entries.append(EpochStart(epoch, txid))
        self._save(normalized(entries))

    def adopt(self, entries: Iterable[EpochStart]) -> bool:
        """Take the primary's history as ours (after `fork_point` found no difference, or
        after the difference was quarantined). True if it changed."""
        new = normalized(entries)
        if new == self.entries:
            return False
        self._save(new)
        return True

    def fork_point(self, primary: list[EpochStart], txid: int) -> int | None:
        """The first TXID of ours that `primary`'s history does not have, when we are at
        `txid`; None when our records are a prefix of its history (or ours is empty)."""
        mine = self.entries
        if not mine:
            return None
        last = mine[-1].epoch
        newer = [e for e in normalized(primary) if e.epoch > last]
        if not newer:
            return None
        start = newer[0].txid
        return start if start <= txid else None

    def forget(self) -> None:
        """Drop the history (the database was replaced by one without it)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._entries = []


def normalized(entries: Iterable[EpochStart]) -> list[EpochStart]:
    """Ascending epochs, one entry per epoch, TXIDs never decreasing."""
    out: list[EpochStart] = []
    for e in sorted(set(entries)):
        if out and e.epoch == out[-1].epoch:
            continue
        if out and e.txid < out[-1].txid:
            e = EpochStart(e.epoch, out[-1].txid)
        out.append(e)
    return out
