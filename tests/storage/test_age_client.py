"""AgeReplicaClient over the storage suite's backends (a directory and S3 on moto_server),
and the `replica.age` / `replica.validation-interval` settings. Keys are made here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyrage
import pytest

from litefs_py.config import Config, load_config
from litefs_py.errors import ExitCode, QuietError
from litefs_py.replica_clients import client_for
from litefs_py.storage.age import (
    AGE_MAGIC,
    AgeKeyError,
    AgeKeys,
    AgeReplicaClient,
    DamagedCiphertextError,
)

from .conftest import Backend
from .helpers import TS, ltx_bytes, meta


def _keys() -> tuple[str, str]:
    ident = pyrage.x25519.Identity.generate()
    return str(ident.to_public()), str(ident)


def test_objects_are_encrypted_and_read_back(backend: Backend) -> None:
    public, secret = _keys()
    client = AgeReplicaClient(backend.client, AgeKeys((public,), (secret,)))
    data = ltx_bytes(1, 1, TS, size=3 << 20)  # bigger than a read chunk
    info = client.write_ltx(0, 1, 1, data, meta())
    stored = backend.client.read_ltx(client.ltx_files(0)[0])
    assert stored.startswith(AGE_MAGIC) and data[:100] not in stored
    [listed] = client.ltx_files(0)
    assert client.ltx_metadata(listed).metadata["litefs-encryption"] == "age"
    assert client.ltx_metadata(listed).post_apply_checksum == info.post_apply_checksum
    assert client.read_ltx(listed) == data
    assert client.read_ltx(listed, 0, 100) == data[:100]
    assert b"".join(client.open_ltx(listed)) == data
    # As a restore reads it: one request (a GET on S3), its metadata readable, bytes decrypted.
    full, chunks = client.open_ltx_with_metadata(listed)
    assert full.post_apply_checksum == info.post_apply_checksum
    assert full.metadata["litefs-encryption"] == "age" and b"".join(chunks) == data
    unread = client.open_ltx_with_metadata(listed)[1]
    unread.close()  # type: ignore[attr-defined]  # before the first chunk: released
    # A plain object (written before encryption was turned on) reads as it is.
    plain = ltx_bytes(2, 2, TS)
    backend.client.write_ltx(0, 2, 2, plain, meta())
    second = client.ltx_files(0)[1]
    assert client.read_ltx(second) == plain and b"".join(client.open_ltx(second)) == plain


def test_missing_wrong_identity_and_damage_are_told_apart(backend: Backend) -> None:
    public, secret = _keys()
    writer = AgeReplicaClient(backend.client, AgeKeys((public,), ()))
    writer.write_ltx(0, 1, 1, ltx_bytes(1, 1, TS), meta())
    [listed] = writer.ltx_files(0)
    with pytest.raises(AgeKeyError, match="no identity was given") as info:
        writer.read_ltx(listed)
    assert info.value.code == ExitCode.CONFIG
    _other_public, other_secret = _keys()
    wrong = AgeReplicaClient(backend.client, AgeKeys((), (other_secret,)))
    with pytest.raises(AgeKeyError, match="none of the 1 identities"):
        b"".join(wrong.open_ltx(listed))
    reader = AgeReplicaClient(backend.client, AgeKeys((), (secret,)))
    stored = bytearray(backend.client.read_ltx(listed))
    stored[-20] ^= 0x01
    backend.put(backend.ltx_key(0, 1, 1), bytes(stored))
    with pytest.raises(DamagedCiphertextError, match="does not decrypt"):
        reader.read_ltx(reader.ltx_files(0)[0])
    with pytest.raises(AgeKeyError, match="no recipients"):
        reader.write_ltx(0, 2, 2, ltx_bytes(2, 2, TS), meta())


def load_config_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "litefs.yml"
    path.write_text(text)
    return load_config(path, env=env or {})


def test_settings(tmp_path: Path) -> None:
    public, secret = _keys()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"# created by the test\n{secret}\n")
    cfg = load_config_text(tmp_path, f"""
replica:
  url: file:///srv/backups
  validation-interval: 30m
  age:
    recipients: [{public}]
    identities: ["${{AGE_KEY}}", {key_file}]
""", {"AGE_KEY": secret})
    replica = cfg.replica_for("app.db")
    assert replica is not None and replica.validation_interval == 1800.0
    assert replica.age is not None and replica.age.recipients == (public,)
    assert secret not in repr(replica)
    assert isinstance(client_for(replica), AgeReplicaClient)
    assert not isinstance(client_for(replace(replica, age=None)), AgeReplicaClient)
    assert replace(replica, age=None).validation_interval == 1800.0


@pytest.mark.parametrize(("age", "where", "says"), [
    ("{recipients: [age1nope]}", "replica.age.recipients[0]", "not an age recipient"),
    ("{identities: [AGE-SECRET-KEY-1NOPE]}", "replica.age.identities[0]", "not an age identity"),
    ("{identities: [relative/key.txt]}", "replica.age.identities[0]", "absolute path"),
    ("{identities: [/nonexistent/key.txt]}", "replica.age.identities[0]", "cannot read"),
    ("{recipient: [x]}", "replica.age.recipient", "unknown key"),
    ("{}", "replica.age", "needs recipients"),
    ("[age1x]", "replica.age", "expected a mapping"),
])
def test_bad_age_settings_name_the_key(tmp_path: Path, age: str, where: str, says: str) -> None:
    with pytest.raises(QuietError) as info:
        load_config_text(tmp_path, f"replica:\n  url: file:///srv/b\n  age: {age}\n")
    assert info.value.code == ExitCode.CONFIG
    assert where in info.value.message and says in info.value.message, info.value.message
    assert "NOPE" not in info.value.message, "a (would-be) secret key in an error message"
