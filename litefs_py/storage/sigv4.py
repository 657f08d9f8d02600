"""AWS Signature Version 4 for S3 requests without a body (GET, HEAD), as storage/s3_reader.py
sends them.

Why not botocore.auth: importing it pulls in botocore.compat, urllib3 and the email package
(about 0.2 s of CPU at every start); this is the few lines of the algorithm that a read-only
restore needs. tests/storage/test_s3_reader.py checks that it signs byte for byte like
botocore's S3SigV4Auth.

For S3 the canonical URI is the path exactly as sent (already percent-encoded, not
normalized); the canonical query string sorts the parameters and encodes keys and values
with only `-_.~` left as they are.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True)
class StaticCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


def canonical_query(params: Mapping[str, str]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                    for k, v in sorted(params.items()))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


class Signer:
    """Signs requests for one service and region; the derived signing key is kept per day."""

    def __init__(self, credentials: StaticCredentials, region: str, service: str = "s3"
                 ) -> None:
        self.credentials = credentials
        self.region = region
        self.service = service
        self._day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            k = _hmac(("AWS4" + self.credentials.secret_access_key).encode("utf-8"), day)
            for part in (self.region, self.service, "aws4_request"):
                k = _hmac(k, part)
            self._day, self._key = day, k
        return self._key

    def sign(self, method: str, host: str, path: str, query: str,
             headers: dict[str, str], now: datetime) -> None:
        """Add X-Amz-Date, X-Amz-Content-SHA256, the session token if any, and
        Authorization to `headers`. `path` is percent-encoded as it will be sent; `query` is
        canonical_query(...) of the parameters; `now` is in UTC."""
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        headers["X-Amz-Date"] = amz_date
        headers["X-Amz-Content-SHA256"] = EMPTY_SHA256
        if self.credentials.session_token:
            headers["X-Amz-Security-Token"] = self.credentials.session_token
        signed = {"host": host}
        for name, value in headers.items():
            signed[name.lower()] = " ".join(value.split())
        names = sorted(signed)
        canonical = "\n".join([
            method, path, query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names), EMPTY_SHA256])
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join([ALGORITHM, amz_date, scope,
                             hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
        signature = hmac.new(self._signing_key(day), to_sign.encode("utf-8"),
                             hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={self.credentials.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}")
