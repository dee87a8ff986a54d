"""What imgsign accepts beyond "the maths checks out": key sizes and certificate dates."""

from __future__ import annotations

import dataclasses
import datetime

from imgsign.errors import WeakKey

#: Below this many bits an RSA or DSA key is refused unless the policy opts out.
MIN_RSA_DSA_BITS = 2048


@dataclasses.dataclass(frozen=True)
class Policy:
    """Checks applied when signing and verifying.

    The defaults are strict.  ``allow_weak_keys`` and ``ignore_certificate_dates``
    are explicit opt-outs (CLI ``--allow-weak-keys``, ``--ignore-cert-dates``).
    """

    #: Minimum RSA modulus / DSA p size in bits.
    min_rsa_dsa_bits: int = MIN_RSA_DSA_BITS
    #: Accept RSA/DSA keys smaller than ``min_rsa_dsa_bits``.
    allow_weak_keys: bool = False
    #: Skip the signing certificate's notBefore/notAfter check.
    ignore_certificate_dates: bool = False
    #: The moment certificates are checked at; None means "now".
    at: datetime.datetime | None = None
    #: The moment the signing certificate and its chain are judged at instead, when a verified timestamp
    #: says the signature was made then (:func:`imgsign.timestamp.check`'s ``judge_at``); CRLs and OCSP
    #: answers are still judged at :meth:`now`.  None: at :meth:`now`.
    certificates_at: datetime.datetime | None = None

    def now(self) -> datetime.datetime:
        """The evaluation time, timezone-aware UTC."""
        return _utc(self.at) if self.at is not None else datetime.datetime.now(datetime.timezone.utc)

    def certificate_time(self) -> datetime.datetime:
        """When certificate validity periods are judged: :attr:`certificates_at`, else :meth:`now`."""
        return _utc(self.certificates_at) if self.certificates_at is not None else self.now()


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment.replace(tzinfo=datetime.timezone.utc) if moment.tzinfo is None else moment


DEFAULT_POLICY = Policy()


def check_key_strength(policy: Policy, algorithm: str, bits: int, description: str) -> None:
    """Raise :class:`~imgsign.errors.WeakKey` for an RSA/DSA key below the policy minimum.

    ``algorithm`` is an OpenStack key type name; EC key types are all >= 384 bits.
    """
    if algorithm not in ("RSA-PSS", "DSA") or policy.allow_weak_keys:
        return
    if bits < policy.min_rsa_dsa_bits:
        raise WeakKey(
            f"{description} key is below the {policy.min_rsa_dsa_bits}-bit minimum "
            f"(--allow-weak-keys overrides this; Glance and Nova would accept it)"
        )
