"""#14 item 1: the secret never crosses a network in clear. TLS on the replication API with a
CA made in the test, client certificates (mTLS), certificate problems named, and a replica
that refuses to send its secret over plain HTTP to a host that is not loopback."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.replica.harness import Cluster, wait_for, wait_same_pos
from tests.replica.test_replica_recovery import (
    DB,
    commit_rows,
    local_ipv4_addresses,
    make_table,
    read_pos,
    rows,
    wait_status,
)
from tests.replica.tls_certs import TestCA

INFO = "/litefs/v1/info"
SECRET = "tls-secret"


def tls_client(ca: TestCA, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.ca_pem))
    if cert is not None:
        ctx.load_cert_chain(*map(str, cert))
    return ctx


def https_primary(cluster: Cluster, ca: TestCA, **tls: object) -> dict[str, object]:
    server = ca.issue("primary", "127.0.0.1", "localhost")
    cluster.scheme = "https"
    return {"http": {"tls": {"cert": str(server.cert), "key": str(server.key), **tls}}}


def test_replication_over_tls_with_a_private_ca(cluster: Cluster, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    primary = cluster.primary(secret=SECRET, extra=https_primary(cluster, ca))
    assert f"replication API on https://0.0.0.0:{cluster.port}" in primary.log()
    assert "clear text" not in primary.log()
    replica = cluster.replica(secret=SECRET, extra={"http": {"tls": {"ca": str(ca.ca_pem)}}})
    make_table(primary, 20)
    wait_same_pos(primary, replica, DB)
    assert rows(replica) == rows(primary)
    assert cluster.url.startswith("https://")

    # A verifying client gets in with the secret; plain HTTP gets nothing (the port speaks
    # only TLS), and a client that does not know the CA refuses the server.
    r = httpx.get(cluster.url + INFO, verify=tls_client(ca), timeout=5,
                  headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200 and DB in r.json()["dbs"]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{cluster.port}{INFO}", timeout=5,
                  headers={"Authorization": f"Bearer {SECRET}"})
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(cluster.url + INFO, verify=ssl.create_default_context(), timeout=5)

    # A replica without http.tls.ca checks the system's CAs, which did not sign this
    # certificate: it says so, and replicates nothing.
    stranger = cluster.replica(secret=SECRET, name="stranger")
    wait_for(lambda: "did not prove who it is" in stranger.log(), 15,
             "the replica to refuse the primary's certificate")
    assert "set http.tls.ca to the CA that signed the primary's certificate" in stranger.log()
    assert read_pos(stranger, DB) is None
    wait_status(stranger, lambda st: "did not prove who it is" in str(st["last_error"]),
                "the refusal in status")
    commit_rows(primary, 5)
    wait_same_pos(primary, replica, DB)  # the trusting replica goes on


def test_client_certificates(cluster: Cluster, tmp_path: Path) -> None:
    """mTLS: with http.tls.client-ca the primary accepts only replicas that present a
    certificate that CA signed; it then needs no secret to serve other hosts."""
    server_ca = TestCA(tmp_path / "pki", "servers")
    client_ca = TestCA(tmp_path / "pki", "clients")
    other_ca = TestCA(tmp_path / "pki", "others")
    primary = cluster.primary(extra=https_primary(cluster, server_ca,
                                                  **{"client-ca": str(client_ca.ca_pem)}))
    log = primary.log()
    assert "client certificates required" in log and "listens on 127.0.0.1" not in log
    assert f"https://0.0.0.0:{cluster.port}" in log

    def tls(ca: TestCA | None, label: str) -> dict[str, object]:
        keys: dict[str, object] = {"ca": str(server_ca.ca_pem)}
        if ca is not None:
            cert = ca.issue(label, f"{label}.replica")
            keys |= {"client-cert": str(cert.cert), "client-key": str(cert.key)}
        return {"http": {"tls": keys}}

    good = cluster.replica(name="good", extra=tls(client_ca, "good"))
    no_cert = cluster.replica(name="nocert", extra=tls(None, "nocert"))
    forged = cluster.replica(name="forged", extra=tls(other_ca, "forged"))
    make_table(primary, 10)
    wait_same_pos(primary, good, DB)
    assert rows(good) == rows(primary)
    # TLS 1.3 rejects a client certificate after the client's handshake is done: the replica
    # sees the connection closed (or an alert), and names the likely fix either way.
    for bad in (no_cert, forged):
        wait_for(lambda bad=bad: "set http.tls.client-cert/client-key to one signed by"
                 in bad.log(), 15, f"{bad.mount_dir} to name the likely fix")
        assert read_pos(bad, DB) is None

    # Raw clients: the right certificate gets in, none gets nothing.
    good_cert = client_ca.issue("raw", "raw.client")
    r = httpx.get(cluster.url + INFO, timeout=5,
                  verify=tls_client(server_ca, (good_cert.cert, good_cert.key)))
    assert r.status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(cluster.url + INFO, verify=tls_client(server_ca), timeout=5)


def test_secret_is_not_sent_in_clear_to_another_host(cluster: Cluster) -> None:
    """A replica whose primary is at http:// on a host that is not loopback refuses to send
    the secret (nothing reaches the primary) unless http.allow-insecure is true, which
    works and warns naming the risk."""
    host = socket.gethostname()
    try:
        socket.getaddrinfo(host, cluster.port)
    except OSError:
        host = next(iter(local_ipv4_addresses()), "")
    assert host, "this host has no name that resolves and no non-loopback address"
    primary = cluster.primary(secret=SECRET)
    assert "replicas send http.secret in clear text; set http.tls.cert/key" in primary.log()
    make_table(primary, 5)
    url = f"http://{host}:{cluster.port}"
    refusing = cluster.replica(secret=SECRET, name="refusing", primary_url=url)
    wait_for(lambda: "refusing to send http.secret over plain HTTP" in refusing.log(), 15,
             "the replica to refuse to send its secret")
    text = refusing.log()
    assert "http.allow-insecure: true" in text and "http.tls.cert/key" in text
    assert f"clear text to {url}" in text
    time.sleep(0.5)
    assert "connected" not in primary.log() and "refused a replication" not in primary.log()
    assert read_pos(refusing, DB) is None
    refusing.stop()

    trusting = cluster.replica(secret=SECRET, name="trusting", primary_url=url,
                               extra={"http": {"allow-insecure": True}})
    wait_same_pos(primary, trusting, DB)
    assert (f"http.allow-insecure is true: the secret would cross the network in clear text "
            f"to {url}") in trusting.log()
    # Loopback is not "a network": the default cluster replica sends its secret as before.
    plain = cluster.replica(secret=SECRET, name="plain")
    wait_same_pos(primary, plain, DB)
    assert "clear text" not in plain.log()


@pytest.mark.parametrize(("tls", "needles"), [
    ({"cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"},
     ["http.tls.cert", "/nonexistent/cert.pem", "No such file"]),
    ({"ca": "SELF"}, ["http.tls.ca", "not a PEM CA bundle"]),
    ({"cert": "SELF", "key": "SELF"}, ["http.tls.cert / http.tls.key", "not a PEM"]),
])
def test_unusable_certificate_files_stop_the_mount_with_one_line(
        tmp_path: Path, tls: dict[str, str], needles: list[str]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    keys = {k: str(junk) if v == "SELF" else v for k, v in tls.items()}
    cfg = tmp_path / "litefs.yml"
    cfg.write_text(f"http: {{tls: {keys!r}}}\n".replace("'", '"'))
    done = subprocess.run([sys.executable, "-m", "litefs_py", "mount", "--config", str(cfg),
                           "--mount-dir", str(tmp_path / "mnt"),
                           "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert all(n in lines[-1] for n in needles), lines
