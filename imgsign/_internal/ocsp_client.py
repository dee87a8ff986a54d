"""Asking OCSP responders, and reading responses stored with a signature (the I/O edge of :mod:`imgsign.ocsp`).

:class:`OcspClient` is the :class:`imgsign.chain.OcspSource` ``verify`` uses.  For each
certificate on the path it tries, in order:

1. the responses stored with the signature (``imgsign_ocsp_v1``): one about this certificate
   that is current is the answer, with no network; a stale one is ignored; a forged or
   malformed one is an error;
2. the responders the certificate names (authorityInformationAccess), when ``network``
   (else, offline, a certificate that names one is :class:`~imgsign.errors.OCSPUnavailable`):
   a fresh nonce per request, one deadline per exchange (``[imgsign] ocsp_timeout``), an
   answer of at most :data:`MAX_ANSWER` bytes, no redirect.  None reachable:
   :class:`~imgsign.errors.OCSPUnavailable` (the chain then needs a complete CRL);
3. nothing: a certificate that names no responder is left to CRLs.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from imgsign import ocsp
from imgsign._internal.binary_post import post
from imgsign._internal.deadline import Deadline
from imgsign.certificates import describe
from imgsign.errors import OCSPStatusUnknown, OCSPUnavailable

#: Largest OCSP answer read.
MAX_ANSWER = 64 * 1024
#: Most responder URLs tried per certificate.
MAX_URLS = 2
#: Names a certificate in the per-client memo.
_ID_HASH = hashes.SHA256()
DEFAULT_TIMEOUT = 10.0
#: ``[imgsign] ocsp`` (and ``[imgsign_import] ocsp``): ask responders, stored responses only, or CRLs only.
MODES = ("strict", "offline", "off")


def fetch(cert: x509.Certificate, issuer: x509.Certificate, *, timeout: float = DEFAULT_TIMEOUT,
          now: datetime.datetime | None = None) -> tuple[bytes, ocsp.OcspResult] | None:
    """Ask the responders ``cert`` names: the response (DER) and what it proves; None when it names none.

    :class:`OCSPUnavailable` when none answers; :class:`OCSPStatusUnknown` for an unusable or stale answer.
    """
    urls = ocsp.responder_urls(cert)[:MAX_URLS]
    if not urls:
        return None
    failures = []
    for url in urls:
        nonce = os.urandom(16)
        request = ocsp.make_request(cert, issuer, nonce)
        try:
            answer = post(url, request, content_type="application/ocsp-request", accept="application/ocsp-response",
                          deadline=Deadline(timeout, "[imgsign] ocsp_timeout"), error=OCSPUnavailable,
                          service=f"the OCSP responder {url}", max_body=MAX_ANSWER)
        except OCSPUnavailable as exc:
            failures.append(exc.message)
            continue
        moment = now or datetime.datetime.now(datetime.timezone.utc)
        try:
            return answer, ocsp.check_response(answer, cert, issuer, now=moment, nonce=nonce)
        except ocsp.NotAbout as exc:
            raise OCSPStatusUnknown(f"the OCSP responder {url} answered about other certificates ({exc})") from None
        except ocsp.Stale as exc:
            raise OCSPStatusUnknown(f"{exc} (from {url})") from None
    raise OCSPUnavailable(f"no OCSP responder of certificate {describe(cert)} could be asked: {'; '.join(failures)}")


def for_document(document: Mapping[str, object], mode: str = "strict",
                 timeout: float = DEFAULT_TIMEOUT) -> OcspClient | None:
    """The OCSP source of one image, as ``mode`` (``[imgsign] ocsp``) says: None when ``off``; else the
    response stored with its signature (``imgsign_ocsp_v1``, :class:`~imgsign.errors.OCSPStatusUnknown`
    when malformed) first, then, under ``strict`` only, the responders the certificates name.

    Every verification point (``verify``, ``audit``, the Glance plugin, compute adoption) makes its
    source here, so a stapled response counts, or is refused, the same way everywhere."""
    if mode not in MODES:
        raise ValueError(f"OCSP mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "off":
        return None
    stored = ocsp.response_from_properties(document)
    return OcspClient([stored] if stored else [], network=mode == "strict", timeout=timeout)


class OcspClient:
    """An :class:`imgsign.chain.OcspSource`: stored responses first, then (with ``network``) the responders.

    Each (certificate, issuer) is answered once per client: a path validated against several trusted
    certificates in turn asks a responder once."""

    def __init__(self, stored: Sequence[bytes] = (), *, network: bool = True,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.stored = list(stored)
        self.network = network
        self.timeout = timeout
        #: Every answer used, in path order (for ``--json``).
        self.results: list[tuple[str, ocsp.OcspResult]] = []
        self._answered: dict[tuple[bytes, bytes], ocsp.OcspResult | OCSPUnavailable | None] = {}

    def status(self, cert: x509.Certificate, issuer: x509.Certificate,
               now: datetime.datetime) -> ocsp.OcspResult | None:
        key = (cert.fingerprint(_ID_HASH), issuer.fingerprint(_ID_HASH))
        if key not in self._answered:
            try:
                self._answered[key] = self._status(cert, issuer, now)
            except OCSPUnavailable as exc:  # not asked again (a dead responder costs one deadline)
                self._answered[key] = exc
        answer = self._answered[key]
        if isinstance(answer, OCSPUnavailable):
            raise OCSPUnavailable(answer.message)
        return answer

    def _status(self, cert: x509.Certificate, issuer: x509.Certificate,
                now: datetime.datetime) -> ocsp.OcspResult | None:
        for der in self.stored:
            try:
                result = ocsp.check_response(der, cert, issuer, now=now, stored=True)
            except (ocsp.NotAbout, ocsp.Stale):
                continue
            self.results.append((describe(cert), result))
            return result
        if not self.network:
            if ocsp.responder_urls(cert):
                raise OCSPUnavailable(f"certificate {describe(cert)} names an OCSP responder, no current response "
                                      f"is stored with the signature, and OCSP is offline here")
            return None
        fetched = fetch(cert, issuer, timeout=self.timeout, now=now)
        if fetched is None:
            return None
        self.results.append((describe(cert), fetched[1]))
        return fetched[1]
