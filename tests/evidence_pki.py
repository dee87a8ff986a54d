"""The signers the timestamp and OCSP tests share: a TSA under the test root CA, and under the intermediate CA
a short-lived signer (timestamped while valid, expired when the tests run), one its OCSP responder says is
revoked and one it says is good, with the responder's index (tests/servers/ocsp.py, tests/servers/tsa.py)."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from tests.conftest import pki
from tests.servers.ocsp import free_port, index_line
from tests.servers.tsa import issue, issue_tsa

CA_KEY, CA = pki("intermediate-ca.key"), pki("intermediate-ca.pem")


@dataclasses.dataclass(frozen=True)
class EvidencePki:
    port: int  # the OCSP responder's, which the revoked and good certificates name
    tsa_key: Path
    tsa_cert: Path
    short: tuple[Path, Path]  # (key, certificate) of each signer
    revoked: tuple[Path, Path]
    good: tuple[Path, Path]
    index: Path  # the responder's index.txt


def evidence_pki(work: Path, short_life: float, *, good_name: str = "ocsp-good",
                 revocation_reason: str | None = None) -> EvidencePki:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    tsa_key, tsa_cert = issue_tsa(work, "tsa", pki("root-ca.key"), pki("root-ca.pem"))
    now = datetime.datetime.now(datetime.timezone.utc)
    short = issue(work, "short-lived", CA_KEY, CA, not_after=now + datetime.timedelta(seconds=short_life))
    revoked = issue(work, "ocsp-revoked", CA_KEY, CA, ocsp_url=url)
    good = issue(work, good_name, CA_KEY, CA, ocsp_url=url)
    index = work / "index.txt"
    revoked_line = index_line(revoked[1], now - datetime.timedelta(hours=1), *(
        (revocation_reason,) if revocation_reason else ()))
    index.write_text(index_line(good[1]) + revoked_line)
    return EvidencePki(port, tsa_key, tsa_cert, short, revoked, good, index)
