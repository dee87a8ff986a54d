"""Every error imgsign raises, in one flat module.

Each class carries the CLI exit code it maps to (``exit_code``), so the
command line, the libvirt hook and library callers agree on what failed.
The codes are grouped by tens: 1x input, 2x certificate, 3x signature,
4x crypto backend, 5x key manager, 6x the compute host's image cache,
7x Glance, 8x trust policy (80-84) and Nova (85-89), 9x the signing gateway.
``0`` is success, ``1`` an internal error (a bug), ``2`` a command-line usage error.
"""

from __future__ import annotations


class ImgsignError(Exception):
    """Base class of every error imgsign raises on purpose.

    Its message is one line safe for a terminal and a log: pieces of secret option values are
    scrubbed (:mod:`imgsign._internal.redact`) and control, format and line-break characters from
    foreign text shown as escapes (:mod:`imgsign._internal.untrusted`), whoever prints it.
    """

    exit_code = 1
    #: Short machine-readable name, printed by ``--json`` and the hook.
    reason = "error"

    def __init__(self, message: str) -> None:
        from imgsign._internal.redact import scrub
        from imgsign._internal.untrusted import safe

        message = safe(scrub(message))
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- 1x: input ---------------------------------------------------------------

class InputError(ImgsignError):
    """A file is missing or unreadable, or a JSON document is malformed."""

    exit_code = 10
    reason = "input-error"


class PropertiesError(ImgsignError):
    """An ``img_signature*`` property is missing or malformed."""

    exit_code = 11
    reason = "invalid-properties"


class UnsupportedAlgorithm(ImgsignError):
    """Unknown hash method or key type, or a key OpenStack cannot express."""

    exit_code = 12
    reason = "unsupported-algorithm"


class KeyTypeMismatch(ImgsignError):
    """The declared key type does not match the actual key or certificate."""

    exit_code = 13
    reason = "key-type-mismatch"


class PrivateKeyError(ImgsignError):
    """A private key cannot be loaded (unreadable, encrypted, wrong passphrase)."""

    exit_code = 14
    reason = "private-key-error"


class WeakKey(ImgsignError):
    """A key is below the minimum size enforced by policy."""

    exit_code = 15
    reason = "weak-key"


# --- 2x: certificate -----------------------------------------------------------

class CertificateError(ImgsignError):
    """A certificate is unreadable or not usable for image signing."""

    exit_code = 20
    reason = "certificate-error"


class CertificateExpired(ImgsignError):
    """The certificate's notAfter is in the past."""

    exit_code = 21
    reason = "certificate-expired"


class CertificateNotYetValid(ImgsignError):
    """The certificate's notBefore is in the future."""

    exit_code = 22
    reason = "certificate-not-yet-valid"


class CertificateKeyMismatch(ImgsignError):
    """The private key does not belong to the certificate."""

    exit_code = 23
    reason = "certificate-key-mismatch"


class UntrustedCertificate(ImgsignError):
    """The certificate does not chain to a trusted certificate."""

    exit_code = 24
    reason = "untrusted-certificate"


class CertificateRevoked(ImgsignError):
    """A certificate in the chain is revoked (by a CRL or an OCSP response)."""

    exit_code = 25
    reason = "certificate-revoked"


class TimestampError(ImgsignError):
    """An RFC 3161 timestamp token is malformed, invalid, from an untrusted TSA, or not over this signature."""

    exit_code = 26
    reason = "timestamp-invalid"


class TimestampUnavailable(ImgsignError):
    """The time-stamping authority could not be reached, was too slow, or answered with no usable token."""

    exit_code = 27
    reason = "timestamp-unavailable"


class OCSPUnavailable(ImgsignError):
    """A certificate names an OCSP responder that could not be reached, and no complete CRL covers it."""

    exit_code = 28
    reason = "ocsp-unavailable"


class OCSPStatusUnknown(ImgsignError):
    """An OCSP responder answered "unknown", or its answer is stale, unsigned or not about this certificate."""

    exit_code = 29
    reason = "ocsp-status-unknown"


# --- 3x: signature -------------------------------------------------------------

class MalformedSignature(ImgsignError):
    """The signature value is not a well-formed signature for the key."""

    exit_code = 30
    reason = "malformed-signature"


class InvalidSignature(ImgsignError):
    """The signature does not match the data: the image is not what was signed."""

    exit_code = 31
    reason = "invalid-signature"


class IncompleteVerification(ImgsignError):
    """A verifying stream was closed before its end: nothing was verified."""

    exit_code = 32
    reason = "incomplete-verification"


class RawStatementError(ImgsignError):
    """A raw-digest statement is missing, forged, or belongs to another image."""

    exit_code = 33
    reason = "raw-statement-error"


# --- 4x: crypto backend -----------------------------------------------------------

class BackendUnavailable(ImgsignError):
    """No crypto backend can handle the algorithm (e.g. no OpenSSL with binary curves)."""

    exit_code = 40
    reason = "backend-unavailable"


class MissingExtra(ImgsignError):
    """An optional dependency is not installed; the message names the extra (``pip install imgsign[...]``)."""

    exit_code = 41
    reason = "missing-extra"


class SignerLoginError(ImgsignError):
    """A hardware token or signing service refused the credentials (wrong PIN, bad or expired token)."""

    exit_code = 42
    reason = "signer-login-failed"


class SignerUnavailable(ImgsignError):
    """The token or signing service is not there: module or token absent, server unreachable or sealed."""

    exit_code = 43
    reason = "signer-unavailable"


class SigningKeyNotFound(ImgsignError):
    """No signing key with that label, id or name in the token or the signing service."""

    exit_code = 44
    reason = "signing-key-not-found"


class MechanismUnsupported(ImgsignError):
    """The token or service cannot make this kind of signature (mechanism, key type or hash missing)."""

    exit_code = 45
    reason = "mechanism-unsupported"


class SignerRefused(ImgsignError):
    """The token or signing service refused to sign, or returned a signature that does not verify."""

    exit_code = 46
    reason = "signer-refused"


# --- 5x: key manager ------------------------------------------------------------

class KeyManagerError(ImgsignError):
    """The key manager is unreachable, misconfigured or refused the request."""

    exit_code = 50
    reason = "key-manager-error"


class ObjectNotFound(ImgsignError):
    """No object with that id exists in the key manager (for this project)."""

    exit_code = 51
    reason = "not-found"


# --- 6x: images in a compute host's cache ------------------------------------------

class UnsignedImage(ImgsignError):
    """No trust record: the image was not verified when it was downloaded (or is not signed)."""

    exit_code = 60
    reason = "unsigned-image"


class TrustRecordError(ImgsignError):
    """A trust record or the verified-digest state is damaged, forged or inconsistent."""

    exit_code = 61
    reason = "trust-record-error"


class UnsafeImage(ImgsignError):
    """A disk image that could read host files (qcow2 external data file, backing file outside the cache)."""

    exit_code = 62
    reason = "unsafe-image"


class InsecureState(ImgsignError):
    """imgsign's state (directory, key, record, cache entry) is owned or writable by someone else."""

    exit_code = 63
    reason = "insecure-state"


class UnverifiableDevice(ImgsignError):
    """A guest device the boot hook cannot verify: a block, network or volume disk, a shared directory,
    host firmware others can write."""

    exit_code = 64
    reason = "unverifiable-device"


class AdoptionIncomplete(ImgsignError):
    """``boot adopt --all``: bases were refused for different reasons (each one's is in the summary)."""

    exit_code = 65
    reason = "adoption-incomplete"


class BaseBusy(ImgsignError):
    """Another imgsign run held the lock of a base longer than the bounded wait (``lock_timeout``), or
    ``boot release`` was asked to release a base an instance disk still uses (without ``--force``)."""

    exit_code = 66
    reason = "base-busy"


# --- 7x: Glance ---------------------------------------------------------------------

class GlanceUnavailable(ImgsignError):
    """Glance (or the identity service in front of it) is unreachable, misconfigured or refused the credentials."""

    exit_code = 70
    reason = "glance-unavailable"


class ImageNotFound(ImgsignError):
    """Glance has no image with that id (or the credentials cannot see it)."""

    exit_code = 71
    reason = "image-not-found"


class ImageHasNoData(ImgsignError):
    """The Glance image has no data (queued, deleted, killed, or still importing)."""

    exit_code = 72
    reason = "image-has-no-data"


class ImportFailed(ImgsignError):
    """Glance refused or failed the import of uploaded data (its own signature check included)."""

    exit_code = 73
    reason = "import-failed"


class UploadInterrupted(ImgsignError):
    """An upload stopped half-way; the message says what was left in Glance and why."""

    exit_code = 74
    reason = "upload-interrupted"


class PolicyViolation(ImgsignError):
    """An audit found images that fail the policy (unsigned, invalid, untrusted, expiring...)."""

    exit_code = 75
    reason = "policy-violation"


# --- 8x (80-84): trust policy ----------------------------------------------------------------

class TrustPolicyError(ImgsignError):
    """A trust policy file is unreadable or invalid (the message names the place in the file)."""

    exit_code = 80
    reason = "invalid-trust-policy"


class PolicyRefused(ImgsignError):
    """The trust policy refuses the image: no rule selects it, or the rule that does does not trust its
    signer (identity, trust store, dates, revocation under that rule's level)."""

    exit_code = 81
    reason = "policy-refused"


# --- 8x (85-89): Nova (a server's own trusted certificates, on the compute side) -------------

class NovaUnavailable(ImgsignError):
    """Nova's API (or the identity service in front of it) is unreachable, too slow, refused the
    credentials, or answered something that is not a server document; ``[nova] trusted_certs_fallback``
    says whether the boot is then refused or decided by the host's trusted certificates alone."""

    exit_code = 85
    reason = "nova-unavailable"


class NovaAnswerInvalid(ImgsignError):
    """Nova answered a server document that cannot be the server's trusted certificate list (another
    server's, a list that is not a list of ids, more ids than Nova allows): the boot is refused."""

    exit_code = 86
    reason = "nova-answer-invalid"


class UnknownServer(ImgsignError):
    """Nova has no server with the instance's uuid (or the hook's credentials cannot see it)."""

    exit_code = 87
    reason = "unknown-server"


# --- 9x: the compute host's signing gateway (imgsign gateway) -----------------------

class ProvenanceError(ImgsignError):
    """A provenance statement (``imgsign_provenance_v1_*``) is missing, malformed, forged or names another image."""

    exit_code = 90
    reason = "provenance-error"


ALL_ERRORS: tuple[type[ImgsignError], ...] = (
    ImgsignError,
    InputError,
    PropertiesError,
    UnsupportedAlgorithm,
    KeyTypeMismatch,
    PrivateKeyError,
    WeakKey,
    CertificateError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateKeyMismatch,
    UntrustedCertificate,
    CertificateRevoked,
    TimestampError,
    TimestampUnavailable,
    OCSPUnavailable,
    OCSPStatusUnknown,
    MalformedSignature,
    InvalidSignature,
    IncompleteVerification,
    RawStatementError,
    BackendUnavailable,
    MissingExtra,
    SignerLoginError,
    SignerUnavailable,
    SigningKeyNotFound,
    MechanismUnsupported,
    SignerRefused,
    KeyManagerError,
    ObjectNotFound,
    UnsignedImage,
    TrustRecordError,
    UnsafeImage,
    InsecureState,
    UnverifiableDevice,
    AdoptionIncomplete,
    BaseBusy,
    GlanceUnavailable,
    ImageNotFound,
    ImageHasNoData,
    ImportFailed,
    UploadInterrupted,
    PolicyViolation,
    TrustPolicyError,
    PolicyRefused,
    NovaUnavailable,
    NovaAnswerInvalid,
    UnknownServer,
    ProvenanceError,
)
