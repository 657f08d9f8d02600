"""A certificate authority made in the test (trustme) and its PEM files on disk, for
`http.tls` configs: a server certificate for the given names and client certificates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class CertFiles:
    cert: Path  # the certificate chain (PEM)
    key: Path


class TestCA:
    """One CA under `root`; `ca_pem` is what `http.tls.ca` / `client-ca` point at."""

    __test__ = False  # not a pytest class

    def __init__(self, root: Path, name: str = "ca") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.name = root, name
        self.ca = trustme.CA(organization_name=f"litefs test {name}")
        self.ca_pem = root / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))

    def issue(self, label: str, *names: str) -> CertFiles:
        cert = self.ca.issue_cert(*names)
        files = CertFiles(self.root / f"{self.name}-{label}.crt",
                          self.root / f"{self.name}-{label}.key")
        cert.private_key_pem.write_to_path(str(files.key))
        for i, blob in enumerate(cert.cert_chain_pems):
            blob.write_to_path(str(files.cert), append=i > 0)
        return files
