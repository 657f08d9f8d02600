"""Encryption at rest with age (`replica.age`), as Litestream 0.3 offered it.

`AgeReplicaClient` wraps any replica client: every LTX object is encrypted whole, with
age (https://age-encryption.org/v1, X25519 or ssh-ed25519/ssh-rsa recipients), on its way to
the bucket, and decrypted on its way back. Object names, levels and the metadata that restores
and followers plan with (`litestream-timestamp`, `litefs-post-apply-checksum`) stay readable;
the LTX bytes — every page of the database — do not. Encrypted objects carry the metadata
`litefs-encryption: age`.

- `recipients` (public keys, `age1...` or `ssh-ed25519 ...`) are needed to write: the uploader,
  compaction and snapshots. `identities` (secret keys, `AGE-SECRET-KEY-1...`, inline or in
  files) are needed to read: `litefs restore`, bucket-following replicas, the restore drill and
  compaction (which reads level-0 objects to merge them). Litestream 0.3 used the same two lists.
- Objects that are plain LTX (written before encryption was turned on) are read as they are,
  so a replica can move to encryption without a new snapshot; the next snapshot is encrypted.
- The real `litestream restore` (0.5) cannot read an encrypted bucket: it fails on the first
  object ("unmarshal header: invalid LTX file", exit 1) and writes no database
  (tests/replication/test_age.py).

The library is pyrage (Python bindings of the Rust `age` crate, prebuilt wheels): encryption
is the kind of code not to write by hand, and the `age` command-line tool would mean a process
per object and keys on command lines. Decrypting a large object is streamed through spooled
temporary files (in memory up to SPOOL_BYTES, then on disk), never held whole in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import ExitCode
from .base import (
    META_ENCRYPTION,
    ChunkStream,
    DelegatingReplicaClient,
    LtxFileInfo,
    ReplicaClient,
    upload_metadata,
)
from .errors import StorageError

__all__ = [
    "AGE_MAGIC",
    "AgeKeyError",
    "AgeKeys",
    "AgeReplicaClient",
    "AgeSettingsError",
    "DamagedCiphertextError",
    "load_identities",
    "load_recipients",
    "missing_identity_error",
]

AGE_MAGIC = b"age-encryption.org/v1\n"  # how every age file starts
SPOOL_BYTES = 16 << 20  # a decrypted object larger than this goes through a temporary file
CHUNK_SIZE = 1 << 20
_NO_MATCH = "No matching keys found"  # pyrage's DecryptError for identities that do not fit


@dataclass(frozen=True)
class AgeKeys:
    """`replica.age`: public keys to encrypt for, secret keys to decrypt with (entries as
    written in the configuration: keys, or paths of files holding them)."""

    recipients: tuple[str, ...] = ()
    identities: tuple[str, ...] = field(default=(), repr=False)


class AgeSettingsError(ValueError):
    """A bad `replica.age` value: `key` is the sub-key (e.g. `identities[1]`), `detail` says
    what is wrong without showing a secret key."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}")
        self.key = key
        self.detail = detail


class AgeKeyError(StorageError):
    """No identity, or none that fits: a configuration problem (exit 3), not a damaged
    object, and retrying cannot fix it."""

    kind = "age"

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.CONFIG)


class DamagedCiphertextError(StorageError):
    """The identity fits but the ciphertext does not decrypt: the object is damaged."""

    kind = "corrupt"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"object {key} does not decrypt: {problem}")
        self.key = key
        self.problem = problem


def missing_identity_error(key: str, where: str) -> AgeKeyError:
    return AgeKeyError(
        f"object {key} of {where} is encrypted with age and no identity was given to decrypt "
        "it: add the secret key (AGE-SECRET-KEY-1...) to replica.age.identities, or pass "
        "--age-identity FILE to litefs restore")


# ---- keys ------------------------------------------------------------------------------------
# The shape of `replica.age` is read by the configuration schema (config.AgeConfig), which
# loads the keys below at start-up so that a typo fails then and not at the first upload.


def _entries(items: tuple[str, ...], name: str, looks_like: tuple[str, ...]
             ) -> Iterator[tuple[str, str]]:
    """(label, key) for each key: inline ones as they are, and every non-comment line of an
    entry that is a file path (an age identity file, or a recipients file)."""
    for i, item in enumerate(items):
        label = f"{name}[{i}]"
        if item.startswith(looks_like):
            yield label, item
            continue
        path = Path(item)
        if not path.is_absolute():
            raise AgeSettingsError(label, f"expected a key ({' or '.join(looks_like)}...) or "
                                          "the absolute path of a file holding keys")
        try:
            text = path.read_text()
        except OSError as exc:
            raise AgeSettingsError(label, f"cannot read {path}: {exc.strerror or exc}") \
                from None
        lines = [ln.strip() for ln in text.splitlines()]
        keys = [ln for ln in lines if ln and not ln.startswith("#")]
        if not keys:
            raise AgeSettingsError(label, f"{path} holds no key")
        for n, key in enumerate(keys, 1):
            yield f"{label} ({path} line {n})", key


def load_recipients(items: tuple[str, ...]) -> list[Any]:
    import pyrage

    out: list[Any] = []
    for label, key in _entries(items, "recipients", ("age1", "ssh-")):
        try:
            if key.startswith("ssh-"):
                out.append(pyrage.ssh.Recipient.from_str(key))
            else:
                out.append(pyrage.x25519.Recipient.from_str(key))
        except pyrage.RecipientError as exc:
            raise AgeSettingsError(label, f"not an age recipient ({exc}); expected age1... "
                                          "(age-keygen -y) or an ssh public key") from None
    return out


def load_identities(items: tuple[str, ...]) -> list[Any]:
    import pyrage

    out: list[Any] = []
    for label, key in _entries(items, "identities", ("AGE-SECRET-KEY-",)):
        try:
            out.append(pyrage.x25519.Identity.from_str(key))
        except pyrage.IdentityError:
            # pyrage's message may quote the key: never show a secret.
            raise AgeSettingsError(label, "not an age identity; expected "
                                          "AGE-SECRET-KEY-1... (age-keygen)") from None
    return out


# ---- the client ------------------------------------------------------------------------------


class AgeReplicaClient(DelegatingReplicaClient):
    """`inner` with every LTX object encrypted for `keys.recipients` and decrypted with
    `keys.identities`. Raw objects (the lease, litefs doctor's probe) are not encrypted."""

    def __init__(self, inner: ReplicaClient, keys: AgeKeys) -> None:
        super().__init__(inner)
        self.keys = keys
        self._recipients = load_recipients(keys.recipients)
        self._identities = load_identities(keys.identities)

    def write_ltx(self, level: int, min_txid: int, max_txid: int, data: bytes,
                  metadata: dict[str, str]) -> LtxFileInfo:
        import pyrage

        if not self._recipients:
            raise AgeKeyError(
                f"cannot write to {self.description}: replica.age has no recipients to "
                "encrypt for; add the public key(s) (age1..., from age-keygen -y) to "
                "replica.age.recipients")
        # The timestamp comes from the plaintext's LTX header, as for any upload.
        meta = upload_metadata(data, metadata)
        meta[META_ENCRYPTION] = "age"
        return self.inner.write_ltx(level, min_txid, max_txid,
                                    pyrage.encrypt(data, self._recipients), meta)

    def read_ltx(self, info: LtxFileInfo, start: int = 0, end: int | None = None) -> bytes:
        stored = self.inner.read_ltx(info)
        if not stored.startswith(AGE_MAGIC):
            return stored[start:end]  # a plain object from before encryption
        return self._decrypt(stored, info)[start:end]

    def open_ltx(self, info: LtxFileInfo) -> Iterator[bytes]:
        return self._stream(info, lambda: self.inner.open_ltx(info))

    def open_ltx_with_metadata(self, info: LtxFileInfo) -> tuple[LtxFileInfo, Iterator[bytes]]:
        """The inner client's (one GET on S3: the metadata is in its headers, which
        encryption leaves readable), decrypted."""
        full, stored = self.inner.open_ltx_with_metadata(info)
        return full, ChunkStream(self._stream(full, lambda: stored),
                                 getattr(stored, "close", lambda: None))

    def _stream(self, info: LtxFileInfo, open_stored: Callable[[], Iterator[bytes]]
                ) -> Generator[bytes, None, None]:
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as stored:
            for chunk in open_stored():
                stored.write(chunk)
            stored.seek(0)
            if stored.read(len(AGE_MAGIC)) != AGE_MAGIC:
                stored.seek(0)
                yield from _chunks(stored)  # a plain object from before encryption
                return
            stored.seek(0)
            with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as plain:
                self._decrypt_io(stored, plain, info)
                plain.seek(0)
                yield from _chunks(plain)

    def _check_identities(self, info: LtxFileInfo) -> None:
        if not self._identities:
            raise missing_identity_error(info.key, self.description)

    def _decrypt(self, data: bytes, info: LtxFileInfo) -> bytes:
        import pyrage

        self._check_identities(info)
        try:
            plain: bytes = pyrage.decrypt(data, self._identities)
        except pyrage.DecryptError as exc:
            raise self._decrypt_error(str(exc), info) from None
        return plain

    def _decrypt_io(self, src: IO[bytes], dst: IO[bytes], info: LtxFileInfo) -> None:
        import pyrage

        self._check_identities(info)
        try:
            pyrage.decrypt_io(src, dst, self._identities)
        except pyrage.DecryptError as exc:
            raise self._decrypt_error(str(exc), info) from None

    def _decrypt_error(self, problem: str, info: LtxFileInfo) -> StorageError:
        if _NO_MATCH in problem:
            return AgeKeyError(
                f"cannot decrypt object {info.key} of {self.description}: none of the "
                f"{len(self._identities)} identities in replica.age.identities is one it was "
                "encrypted for; give the secret key that belongs to one of the recipients it "
                "was written with")
        return DamagedCiphertextError(info.key, f"age: {problem}")


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK_SIZE):
        yield chunk
