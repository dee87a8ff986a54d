#!/usr/bin/env python3
"""Generate imgsign's test PKI: CAs, a leaf per OpenStack key type, and broken cases.

TEST ONLY - NOT FOR PRODUCTION.  Every private key written here is public.

Run ``.venv/bin/python certs-test/generate.py [--out DIR]`` (imgsign installed; from any directory; the
default output directory is the one holding this script).  Keys are fresh on
every run; names, serial numbers, validity dates and extensions are fixed, so a
rerun changes only keys, certificates and CRLs.

``cryptography`` makes everything it can.  It cannot handle the binary
``ECC_SECT*`` curves, so those leaves are made with the ``openssl`` command
(``$IMGSIGN_OPENSSL`` or ``openssl`` on ``PATH``) via ``openssl ca``, which can
set exact ``-startdate``/``-enddate``.  Secrets reach openssl only through files
in a private (0700) temporary directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imgsign._internal.files import atomic_write  # the project's own: temp file, fsync, rename

ORGANIZATION = "imgsign test PKI - NOT FOR PRODUCTION"
PASSPHRASE = b"test-passphrase-not-secret"
SERIAL_BASE = 0x1000

PrivateKey = rsa.RSAPrivateKey | dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey


def jan1(year: int) -> dt.datetime:
    """Midnight UTC on 1 January of ``year``."""
    return dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc)


Validity = tuple[dt.datetime, dt.datetime]
ROOT_LIFE: Validity = (jan1(2025), jan1(2125))
CA_LIFE: Validity = (jan1(2025), jan1(2100))
LEAF_LIFE: Validity = (jan1(2025), jan1(2075))
EXPIRED: Validity = (jan1(2020), jan1(2021))
NOT_YET_VALID: Validity = (jan1(2100), jan1(2101))
CRL_LIFE: Validity = (jan1(2025), jan1(2075))

PYCA_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1,
}
OPENSTACK_CURVES = ("secp384r1", "secp521r1", "sect409k1", "sect409r1", "sect571k1", "sect571r1")


@dataclass(frozen=True)
class CertSpec:
    """One certificate (and its key) to generate."""

    stem: str
    number: int  # serial = SERIAL_BASE + number
    key: str  # "rsa-3072", "dsa-2048" or "ec-<curve>"
    issuer: str | None  # stem of the issuing CA; None = self-signed
    validity: Validity
    purpose: str
    ca: bool = False
    pathlen: int | None = None
    key_usage: str = "digital_signature"  # leaves only
    pss: bool = False  # the issuer signs this certificate with RSA-PSS

    @property
    def serial(self) -> int:
        return SERIAL_BASE + self.number

    @property
    def binary_curve(self) -> bool:
        return self.key.startswith("ec-sect")


@dataclass(frozen=True)
class CrlSpec:
    """One CRL: the issuing CA and the certificates it revokes (stem, reason)."""

    ca: str
    revoked: tuple[tuple[str, x509.ReasonFlags], ...] = ()
    pss: bool = False


def _leaf(stem: str, number: int, key: str, purpose: str, issuer: str = "intermediate-ca",
          validity: Validity = LEAF_LIFE, key_usage: str = "digital_signature", pss: bool = False) -> CertSpec:
    return CertSpec(stem, number, key, issuer, validity, purpose, key_usage=key_usage, pss=pss)


def _ca(stem: str, number: int, key: str, issuer: str | None, validity: Validity, purpose: str,
        pathlen: int | None = None, pss: bool = False) -> CertSpec:
    return CertSpec(stem, number, key, issuer, validity, purpose, ca=True, pathlen=pathlen, pss=pss)


SPECS: tuple[CertSpec, ...] = (
    # The trusted chain and one good leaf per OpenStack key type.
    _ca("root-ca", 1, "rsa-3072", None, ROOT_LIFE, "trusted root CA"),
    _ca("intermediate-ca", 2, "rsa-3072", "root-ca", CA_LIFE, "intermediate CA issuing the leaves", pathlen=0),
    _leaf("leaf-rsa-pss", 10, "rsa-3072", "good RSA-PSS signing leaf"),
    _leaf("leaf-dsa", 11, "dsa-2048", "good DSA signing leaf"),
    _leaf("leaf-ecc-secp384r1", 12, "ec-secp384r1", "good ECC_SECP384R1 signing leaf"),
    _leaf("leaf-ecc-secp521r1", 13, "ec-secp521r1", "good ECC_SECP521R1 signing leaf"),
    _leaf("leaf-ecc-sect409k1", 14, "ec-sect409k1", "good ECC_SECT409K1 signing leaf (made by openssl)"),
    _leaf("leaf-ecc-sect409r1", 15, "ec-sect409r1", "good ECC_SECT409R1 signing leaf (made by openssl)"),
    _leaf("leaf-ecc-sect571k1", 16, "ec-sect571k1", "good ECC_SECT571K1 signing leaf (made by openssl)"),
    _leaf("leaf-ecc-sect571r1", 17, "ec-sect571r1", "good ECC_SECT571R1 signing leaf (made by openssl)"),
    # Bad cases.
    _leaf("leaf-expired", 30, "rsa-2048", "BAD: expired 2021-01-01", validity=EXPIRED),
    _leaf("leaf-not-yet-valid", 31, "rsa-2048", "BAD: not valid before 2100-01-01", validity=NOT_YET_VALID),
    _leaf("leaf-no-digital-signature", 32, "rsa-2048", "BAD: KeyUsage keyEncipherment only",
          key_usage="key_encipherment"),
    _ca("untrusted-root-ca", 33, "rsa-2048", None, ROOT_LIFE, "BAD: self-signed root nobody trusts"),
    _leaf("leaf-untrusted", 34, "rsa-2048", "BAD: chains to untrusted-root-ca", issuer="untrusted-root-ca"),
    _leaf("not-a-ca", 35, "rsa-2048", "BAD as issuer: CA:FALSE cert issued by root-ca", issuer="root-ca"),
    _leaf("leaf-issuer-not-ca", 36, "rsa-2048", "BAD: issued by not-a-ca, which is no CA", issuer="not-a-ca"),
    _leaf("leaf-rsa-1024", 37, "rsa-1024", "BAD: weak RSA-1024 key"),
    _leaf("leaf-dsa-1024", 38, "dsa-1024", "BAD: weak DSA-1024 key"),
    _leaf("leaf-ecc-secp256r1", 39, "ec-secp256r1", "BAD: P-256, not an OpenStack key type"),
    _ca("intermediate-expired-ca", 40, "rsa-2048", "root-ca", EXPIRED, "BAD: intermediate expired 2021-01-01",
        pathlen=0),
    _leaf("leaf-under-expired-intermediate", 41, "rsa-2048", "BAD: valid leaf under intermediate-expired-ca",
          issuer="intermediate-expired-ca"),
    _leaf("leaf-revoked", 42, "rsa-2048", "BAD: revoked in intermediate-ca.crl.pem (keyCompromise)"),
    _ca("intermediate-revoked-ca", 43, "rsa-2048", "root-ca", CA_LIFE, "BAD: intermediate revoked in root-ca.crl.pem",
        pathlen=0),
    _leaf("leaf-under-revoked-intermediate", 44, "rsa-2048", "BAD: valid leaf under intermediate-revoked-ca",
          issuer="intermediate-revoked-ca"),
    # RSA-PSS signed certificates.
    _ca("intermediate-pss-ca", 50, "rsa-3072", "root-ca", CA_LIFE, "intermediate CA whose cert is signed with RSA-PSS",
        pathlen=0, pss=True),
    _leaf("leaf-under-pss-intermediate", 51, "rsa-3072", "good leaf, cert signed RSA-PSS by intermediate-pss-ca",
          issuer="intermediate-pss-ca", pss=True),
    # An all-ECDSA chain (P-384, ECDSA-SHA384).
    _ca("ecdsa-root-ca", 60, "ec-secp384r1", None, ROOT_LIFE, "P-384 root CA (separate trust anchor)"),
    _ca("ecdsa-intermediate-ca", 61, "ec-secp384r1", "ecdsa-root-ca", CA_LIFE, "P-384 intermediate CA", pathlen=0),
    _leaf("leaf-under-ecdsa-chain", 62, "ec-secp384r1", "good P-384 leaf under the ECDSA chain",
          issuer="ecdsa-intermediate-ca"),
    # A cross-signed loop with no self-signed anchor.
    _ca("cross-a-ca", 70, "rsa-2048", "cross-b-ca", CA_LIFE, "BAD: CA A issued by B (loop, no anchor)"),
    _ca("cross-b-ca", 71, "rsa-2048", "cross-a-ca", CA_LIFE, "BAD: CA B issued by A (loop, no anchor)"),
    _leaf("leaf-under-cross", 72, "rsa-2048", "BAD: leaf under the cross-signed loop", issuer="cross-a-ca"),
)

SPEC_BY_STEM = {spec.stem: spec for spec in SPECS}

CRLS: tuple[CrlSpec, ...] = (
    CrlSpec("root-ca", (("intermediate-revoked-ca", x509.ReasonFlags.ca_compromise),)),
    CrlSpec("intermediate-ca", (("leaf-revoked", x509.ReasonFlags.key_compromise),)),
    CrlSpec("intermediate-revoked-ca"),
    CrlSpec("intermediate-pss-ca", pss=True),
    CrlSpec("ecdsa-root-ca"),
    CrlSpec("ecdsa-intermediate-ca"),
)


# --- output -----------------------------------------------------------------------


def pem_key(key: PrivateKey, encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    """PKCS#8 PEM, unencrypted unless ``encryption`` is given."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption or serialization.NoEncryption())


def iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def require(condition: bool, message: str) -> None:
    """Stop with ``message`` unless ``condition`` holds (a self-check that survives ``python -O``)."""
    if not condition:
        sys.exit(f"generate.py: {message}")


# --- cryptography side ------------------------------------------------------------


def subject(stem: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"imgsign test {stem}"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
    ])


def make_key(kind: str) -> PrivateKey:
    """A fresh key for ``rsa-<bits>``, ``dsa-<bits>`` or ``ec-<curve>``."""
    algorithm, _, param = kind.partition("-")
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=int(param))
    if algorithm == "dsa":
        return dsa.generate_private_key(key_size=int(param))
    return ec.generate_private_key(PYCA_CURVES[param]())


def key_type(kind: str) -> str | None:
    """The OpenStack ``img_signature_key_type`` for a key kind, or None."""
    algorithm, _, param = kind.partition("-")
    if algorithm == "rsa":
        return "RSA-PSS"
    if algorithm == "dsa":
        return "DSA"
    return f"ECC_{param.upper()}" if param in OPENSTACK_CURVES else None


def signing_params(issuer_key: PrivateKey, pss: bool) -> tuple[hashes.HashAlgorithm, padding.PSS | None]:
    """Hash and RSA padding to sign with: SHA-384 for P-384 issuers, else SHA-256."""
    is_p384 = isinstance(issuer_key, ec.EllipticCurvePrivateKey) and issuer_key.curve.name == "secp384r1"
    algorithm: hashes.HashAlgorithm = hashes.SHA384() if is_p384 else hashes.SHA256()
    rsa_padding = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.DIGEST_LENGTH) if pss else None
    return algorithm, rsa_padding


def ski(key: PrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def build_cert(spec: CertSpec, keys: dict[str, PrivateKey]) -> x509.Certificate:
    """Issue ``spec``'s certificate with its issuer's key (self-signed if no issuer)."""
    key = keys[spec.stem]
    issuer = spec.issuer or spec.stem
    issuer_key = keys[issuer]
    not_before, not_after = spec.validity
    usage = {"digital_signature": False, "key_cert_sign": False, "crl_sign": False, "key_encipherment": False}
    usage.update({"key_cert_sign": True, "crl_sign": True} if spec.ca else {spec.key_usage: True})
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject(spec.stem))
        .issuer_name(subject(issuer))
        .public_key(key.public_key())
        .serial_number(spec.serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=spec.ca, path_length=spec.pathlen), critical=True)
        .add_extension(x509.KeyUsage(content_commitment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False, **usage), critical=True)
    )
    if not spec.ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    builder = builder.add_extension(ski(key), critical=False)
    if spec.issuer:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski(issuer_key))
        builder = builder.add_extension(aki, critical=False)
    algorithm, rsa_padding = signing_params(issuer_key, spec.pss)
    return builder.sign(issuer_key, algorithm, rsa_padding=rsa_padding)


def build_crl(spec: CrlSpec, keys: dict[str, PrivateKey]) -> x509.CertificateRevocationList:
    """A CRL from ``spec.ca`` revoking ``spec.revoked`` on its last_update date."""
    last_update, next_update = CRL_LIFE
    ca_key = keys[spec.ca]
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(subject(spec.ca))
        .last_update(last_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski(ca_key)), critical=False)
    )
    for stem, reason in spec.revoked:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(SPEC_BY_STEM[stem].serial)
            .revocation_date(last_update)
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    algorithm, rsa_padding = signing_params(ca_key, spec.pss)
    return builder.sign(ca_key, algorithm, rsa_padding=rsa_padding)


# --- openssl side (binary curves) -------------------------------------------------

OPENSSL_CONFIG = """\
[ca]
default_ca = test_ca

[test_ca]
database = {tmp}/index.txt
new_certs_dir = {tmp}/newcerts
serial = {tmp}/serial
certificate = {tmp}/issuer.pem
private_key = {tmp}/issuer.key
default_md = sha256
policy = policy_supplied
unique_subject = no
email_in_dn = no
copy_extensions = none

[policy_supplied]
commonName = supplied
organizationName = supplied

[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[req]
distinguished_name = req_dn
string_mask = utf8only
prompt = no

[req_dn]
"""


def openssl_path() -> str:
    name = os.environ.get("IMGSIGN_OPENSSL") or "openssl"
    path = shutil.which(name)
    if path is None:
        sys.exit(f"generate.py: {name!r} not found; binary-curve leaves need openssl (set IMGSIGN_OPENSSL)")
    return path


def run_openssl(openssl: str, *args: str) -> str:
    """Run ``openssl args`` (no secrets in args) and return stdout; exit on failure."""
    result = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"generate.py: openssl {args[0]} failed:\n{result.stderr.strip()}")
    return result.stdout


def openssl_leaf(openssl: str, tmp: Path, spec: CertSpec) -> tuple[bytes, bytes]:
    """Make a binary-curve key and its certificate, issued by ``issuer.pem``/``issuer.key`` in ``tmp``."""
    curve = spec.key.removeprefix("ec-")
    key_file, csr_file, cert_file = tmp / f"{spec.stem}.key", tmp / f"{spec.stem}.csr", tmp / f"{spec.stem}.pem"
    run_openssl(openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}",
                "-pkeyopt", "ec_param_enc:named_curve", "-out", str(key_file))
    run_openssl(openssl, "req", "-new", "-config", str(tmp / "openssl.cnf"), "-key", str(key_file),
                "-subj", f"/CN=imgsign test {spec.stem}/O={ORGANIZATION}", "-out", str(csr_file))
    (tmp / "serial").write_text(f"{spec.serial:04X}\n")
    run_openssl(openssl, "ca", "-batch", "-notext", "-preserveDN", "-config", str(tmp / "openssl.cnf"),
                "-extensions", "leaf_ext", "-md", "sha256",
                "-startdate", LEAF_LIFE[0].strftime("%Y%m%d%H%M%SZ"),
                "-enddate", LEAF_LIFE[1].strftime("%Y%m%d%H%M%SZ"),
                "-in", str(csr_file), "-out", str(cert_file))
    run_openssl(openssl, "verify", "-CAfile", str(tmp / "root.pem"), "-untrusted", str(tmp / "issuer.pem"),
                str(cert_file))
    return key_file.read_bytes(), cert_file.read_bytes()


def make_binary_curve_leaves(specs: list[CertSpec], keys: dict[str, PrivateKey],
                             certs: dict[str, x509.Certificate]) -> dict[str, tuple[bytes, bytes]]:
    """{stem: (PKCS#8 PEM key, PEM cert)} for the binary-curve leaves, all issued by intermediate-ca."""
    issuer, root = "intermediate-ca", "root-ca"
    require(all(spec.issuer == issuer for spec in specs), "binary-curve leaves must come from intermediate-ca")
    openssl = openssl_path()
    made: dict[str, tuple[bytes, bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="imgsign-pki-") as name:  # created with mode 0700
        tmp = Path(name)
        (tmp / "newcerts").mkdir()
        (tmp / "index.txt").write_text("")
        (tmp / "openssl.cnf").write_text(OPENSSL_CONFIG.format(tmp=tmp))
        atomic_write(str(tmp / "issuer.key"), pem_key(keys[issuer]), 0o600)
        (tmp / "issuer.pem").write_bytes(certs[issuer].public_bytes(serialization.Encoding.PEM))
        (tmp / "root.pem").write_bytes(certs[root].public_bytes(serialization.Encoding.PEM))
        for spec in specs:
            key_pem, cert_pem = openssl_leaf(openssl, tmp, spec)
            cert = x509.load_pem_x509_certificate(cert_pem)  # cryptography reads it, minus the public key
            cert.verify_directly_issued_by(certs[issuer])
            require((cert.not_valid_before_utc, cert.not_valid_after_utc) == spec.validity
                    and cert.serial_number == spec.serial and cert.subject == subject(spec.stem),
                    f"openssl made {spec.stem} with the wrong dates, serial or subject")
            certs[spec.stem] = cert
            made[spec.stem] = (key_pem, cert_pem)
    return made


# --- main -----------------------------------------------------------------------------


def crl_file(ca: str) -> str:
    return f"{ca}.crl.pem"


def manifest() -> dict[str, object]:
    """The manifest.json content: per-certificate facts plus the CRLs."""
    data: dict[str, object] = {}
    for spec in SPECS:
        data[spec.stem] = {
            "cert": f"{spec.stem}.pem", "key": f"{spec.stem}.key", "issuer": spec.issuer,
            "key_type": key_type(spec.key), "key_spec": spec.key, "purpose": spec.purpose,
            "not_before": iso(spec.validity[0]), "not_after": iso(spec.validity[1]), "serial": spec.serial,
        }
    data["leaf-rsa-pss"].update({  # type: ignore[attr-defined]
        "cert_der": "leaf-rsa-pss.der", "key_der": "leaf-rsa-pss.key.der",
        "encrypted_key": "leaf-rsa-pss-encrypted.key", "passphrase_file": "leaf-rsa-pss-encrypted.passphrase",
    })
    data["chains"] = {"chain.pem": ["intermediate-ca", "root-ca"]}
    data["crls"] = {
        spec.ca: {
            "crl": crl_file(spec.ca), "issuer": spec.ca, "crl_number": 1,
            "last_update": iso(CRL_LIFE[0]), "next_update": iso(CRL_LIFE[1]),
            "revoked": [{"stem": stem, "serial": SPEC_BY_STEM[stem].serial, "reason": reason.name}
                        for stem, reason in spec.revoked],
        }
        for spec in CRLS
    }
    return data


def generate(out: Path) -> None:
    """Generate every file into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    pyca = [spec for spec in SPECS if not spec.binary_curve]
    keys = {spec.stem: make_key(spec.key) for spec in pyca}
    certs = {spec.stem: build_cert(spec, keys) for spec in pyca}  # issuer certs are not needed to issue
    for spec in pyca:  # self-check: raises if a signature does not verify
        certs[spec.stem].verify_directly_issued_by(certs[spec.issuer or spec.stem])
    openssl_made = make_binary_curve_leaves([spec for spec in SPECS if spec.binary_curve], keys, certs)

    def emit(name: str, data: bytes, mode: int = 0o644) -> None:
        atomic_write(str(out / name), data, mode)

    for spec in SPECS:
        if spec.stem in openssl_made:
            key_pem, cert_pem = openssl_made[spec.stem]
        else:
            key_pem, cert_pem = pem_key(keys[spec.stem]), certs[spec.stem].public_bytes(serialization.Encoding.PEM)
        emit(f"{spec.stem}.key", key_pem, 0o600)
        emit(f"{spec.stem}.pem", cert_pem)

    leaf = keys["leaf-rsa-pss"]
    emit("leaf-rsa-pss.der", certs["leaf-rsa-pss"].public_bytes(serialization.Encoding.DER))
    emit("leaf-rsa-pss.key.der", leaf.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()), 0o600)
    emit("leaf-rsa-pss-encrypted.key", pem_key(leaf, serialization.BestAvailableEncryption(PASSPHRASE)), 0o600)
    emit("leaf-rsa-pss-encrypted.passphrase", PASSPHRASE, 0o600)
    emit("chain.pem", b"".join(certs[stem].public_bytes(serialization.Encoding.PEM)
                               for stem in ("intermediate-ca", "root-ca")))

    for crl_spec in CRLS:
        crl = build_crl(crl_spec, keys)
        require(crl.is_signature_valid(keys[crl_spec.ca].public_key()),  # type: ignore[arg-type]
                f"CRL of {crl_spec.ca} does not verify")
        emit(crl_file(crl_spec.ca), crl.public_bytes(serialization.Encoding.PEM))

    text = json.dumps(manifest(), indent=2, sort_keys=True) + "\n"
    emit("manifest.json", text.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate imgsign's TEST-ONLY PKI (the keys are public).")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: the directory holding this script)")
    args = parser.parse_args(argv)
    generate(args.out.resolve())
    print(f"wrote test PKI to {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
