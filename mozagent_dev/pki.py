"""A throwaway PKI for TLS tests, made with the ``openssl`` command: a CA,
server certificates (for 127.0.0.1, or for another name), client
certificates, and a second CA nobody trusts. Keys are 0600, like a host's."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pair:
    """A certificate and its key; ``both`` is the two in one PEM (ZooKeeper's keystore)."""

    cert: Path
    key: Path
    both: Path


class Pki:
    def __init__(self, root: Path, name: str = "ca") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = root / f"{name}.pem"
        self._ca_key = root / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self._ca_key),
            "-out", str(self.ca), "-days", "30", "-subj", f"/CN=mozagent test {name}",
        )  # fmt: skip
        self._ca_key.chmod(0o600)

    def issue(self, name: str, subject: str, san: str | None = None, days: int = 30) -> Pair:
        """A certificate signed by this CA; ``san`` like ``IP:127.0.0.1,DNS:localhost``;
        ``days=-1``: one that expired a day ago (valid from now, until yesterday)."""
        key, csr, cert = (self.root / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", subject,
        )  # fmt: skip
        key.chmod(0o600)
        extra: list[str] = []
        if san:
            ext = self.root / f"{name}.ext"
            ext.write_text(f"subjectAltName={san}\n")
            extra = ["-extfile", str(ext)]
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self._ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", str(days), *extra,
        )  # fmt: skip
        both = self.root / f"{name}.both.pem"
        both.write_text(cert.read_text() + key.read_text())
        both.chmod(0o600)
        return Pair(cert, key, both)
