"""A small PKI for the trust policy tests: CAs and signing leaves made with cryptography (TEST ONLY).

ECDSA P-384 everywhere (fast, and an OpenStack key type: ECC_SECP384R1).  Validity dates are fixed
far in the past and future unless a test asks for others.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

START = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
END = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
_serial = [0x5000]


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{stem}.pem").write_bytes(self.pem)
        (directory / f"{stem}.key").write_bytes(self.key_pem)
        return directory / f"{stem}.pem", directory / f"{stem}.key"


def _next_serial() -> int:
    _serial[0] += 1
    return _serial[0]


def make_ca(subject: str, issuer: Issued | None = None, start: dt.datetime = START, end: dt.datetime = END) -> Issued:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name.from_rfc4514_string(subject)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.cert.subject if issuer else name).public_key(key.public_key())
               .serial_number(_next_serial()).not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA384()), key)


def make_leaf(ca: Issued, subject: str, *, uris: tuple[str, ...] = (), dns: tuple[str, ...] = (),
              start: dt.datetime = START, end: dt.datetime = END) -> Issued:
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string(subject))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(_next_serial()).not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA384()), key)


#: The cloud name in compute host certificates' URI SAN.
CLOUD = "example-cloud"


def make_host(ca: Issued, host: str, *, cloud: str = CLOUD, start: dt.datetime = START,
              end: dt.datetime = END) -> Issued:
    """A compute host's certificate (``imgsign gateway``): the host in the subject and the URI SAN
    ``openstack://<cloud>/nova-compute/<host>`` that makes it a host certificate to a trust policy."""
    return make_leaf(ca, f"CN={host},O=Example Cloud", uris=(f"openstack://{cloud}/nova-compute/{host}",),
                     start=start, end=end)


def make_crl(ca: Issued, revoked: list[Issued], next_update: dt.datetime = END) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(START).next_update(next_update))
    for leaf in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(leaf.cert.serial_number).revocation_date(START).build())
    return builder.sign(ca.key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM)
