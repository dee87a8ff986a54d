"""Helpers shared by the command modules: configuration, key manager, keys, progress, trust."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from imgsign import errors
from imgsign._internal.files import open_image, read_secret_file, read_small_file

if TYPE_CHECKING:
    from cryptography import x509

    from imgsign import chain, keygen, trust_evidence, trust_policy
    from imgsign.algorithms import HashMethod
    from imgsign.keymanager.castellan_store import CastellanStore
    from imgsign.keys import PrivateKey
    from imgsign.policy import Policy
    from imgsign.properties import SignatureProperties
    from imgsign.stream import BackgroundDigest


def hash_choice() -> click.Choice[str]:
    """The ``img_signature_hash_method`` names, for an option."""
    from imgsign.algorithms import HashMethod

    return click.Choice([h.value for h in HashMethod])


def key_type_choice() -> click.Choice[str]:
    """The ``img_signature_key_type`` names, for an option."""
    from imgsign.algorithms import KeyType

    return click.Choice([k.value for k in KeyType])


def say(text: str, err: bool = False) -> None:
    """Print one line: foreign text in it (names, ids, subjects from a service or an image) cannot
    break it into more lines or drive the terminal (:func:`imgsign._internal.untrusted.safe`)."""
    from imgsign._internal.untrusted import safe

    click.echo(safe(text), err=err)


def fail(exc: errors.ImgsignError) -> None:
    """Print ``exc`` as one line (under ``--debug`` after its traceback) and exit with its class's code."""
    if debugging():
        print_traceback(exc)
    say(f"imgsign: error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


def debugging(ctx: click.Context | None = None) -> bool:
    """Was ``--debug`` given (or ``$IMGSIGN_DEBUG`` set, also before the root's options were read)?"""
    import os

    ctx = ctx or click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    if isinstance(obj, dict) and "debug" in obj:
        return bool(obj["debug"])
    return os.environ.get("IMGSIGN_DEBUG", "").lower() not in ("", "0", "false", "no", "off")


def print_traceback(exc: BaseException) -> None:
    """``exc`` with its traceback on stderr, scrubbed (as every line there is) before it is written."""
    import traceback

    from imgsign._internal.redact import scrub

    if exc.__traceback__ is not None:
        sys.stderr.write(scrub("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
        sys.stderr.flush()


def has_config(ctx: click.Context) -> bool:
    """Is there a configuration file (--config, $IMGSIGN_CONFIG or a default location)?"""
    from imgsign.keymanager import config as config_file

    return config_file.find_config_file(ctx.find_root().obj.get("config_file")) is not None


def config(ctx: click.Context) -> Any:
    """imgsign.conf, read once (castellan and oslo load only when it is needed)."""
    from imgsign.keymanager import config as config_file

    root = ctx.find_root()
    if "conf" not in root.obj:
        root.obj["conf"] = config_file.load(root.obj.get("config_file"))
    return root.obj["conf"]


def open_store(ctx: click.Context) -> CastellanStore:
    """The configured key manager (embedded SQLite store unless configured otherwise)."""
    from imgsign.cli._glance import keystone_scope
    from imgsign.keymanager import config as config_file

    root = ctx.find_root()
    if "store" not in root.obj:
        conf = config(ctx)
        scope = keystone_scope(ctx) if config_file.needs_keystone(conf) else None
        root.obj["store"] = config_file.open_store(conf, scope)
    store: CastellanStore = root.obj["store"]
    return store


def quiet_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-q/--quiet`` after a command name; it means what ``imgsign -q COMMAND`` means, for every step of
    the command (:func:`is_quiet` answers for both)."""
    return click.option("-q", "--quiet", is_flag=True, callback=_remember_quiet,
                        help="No progress bar and no success messages.")(func)


def _remember_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    root = ctx.find_root()
    if value and isinstance(root.obj, dict):
        root.obj["quiet"] = True
    return value


def policy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--allow-weak-keys", is_flag=True, help="Accept RSA/DSA keys under 2048 bits (Glance/Nova accept them)."
    )(func)
    return click.option(
        "--ignore-cert-dates", is_flag=True, help="Do not check the certificate's notBefore/notAfter."
    )(func)


def is_quiet(ctx: click.Context, quiet: bool) -> bool:
    return quiet or bool(ctx.obj and ctx.obj.get("quiet"))


@contextlib.contextmanager
def progress_bar(size: int, label: str, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr, only when stderr is a terminal and not quiet."""
    if quiet or not sys.stderr.isatty() or size < 64 * 1024 * 1024:
        yield None
        return
    from imgsign._internal.untrusted import unfiltered

    # The bar moves the cursor (CR, ESC sequences): it writes under the filtering stream, only its own text.
    with click.progressbar(length=size, label=label, file=unfiltered(sys.stderr), show_pos=False,
                           show_percent=True) as bar:
        yield bar.update


def read_passphrase(path: str | None) -> bytes | None:
    if path is None:
        return None
    return read_secret_file(path, "passphrase file")


def load_key(path: str, passphrase_file: str | None, what: str = "private key",
             ctx: click.Context | None = None) -> tuple[PrivateKey, bytes | None]:
    """Load a signing key: a key file (asking for its passphrase on a terminal when it needs one), or a
    key a reference names: in a token (``pkcs11:...``; asking for its PIN on a terminal if none is set)
    or in OpenBao/Vault transit (``hashivault://NAME``, configured by the environment and imgsign.conf)."""
    from imgsign.keys.loading import is_key_reference, load_private_key, open_signing_key

    if is_key_reference(path):
        if passphrase_file is not None:
            raise click.UsageError(f"--passphrase-file is for key files, not for {path.partition('?')[0][:80]} "
                                   f"(a PIN or token "
                                   f"comes from the reference, imgsign.conf or the environment)")
        conf = config(ctx) if ctx is not None and has_config(ctx) else None
        return open_signing_key(path, conf=conf, ask_secret=ask_secret if sys.stdin.isatty() else None), None
    data = read_small_file(path, what)
    passphrase = read_passphrase(passphrase_file)
    try:
        return load_private_key(data, passphrase), passphrase
    except errors.PrivateKeyError as exc:
        if passphrase is None and "encrypted" in exc.message and sys.stdin.isatty():
            passphrase = ask_secret(f"Passphrase for {path}").encode()
            return load_private_key(data, passphrase), passphrase
        raise


def ask_secret(prompt: str) -> str:
    """Ask for a PIN or passphrase on the terminal, without echo; no message shows it from then on."""
    from imgsign._internal import redact

    secret = str(click.prompt(prompt, hide_input=True))
    redact.remember(secret)
    return secret


def signing_certificate(ctx: click.Context, cert_path: str | None, properties: SignatureProperties) -> x509.Certificate:
    """``--cert``, else the certificate the key manager holds under img_signature_certificate_uuid."""
    from imgsign import certificates
    from imgsign.keymanager.anchors import fetch_certificate

    if cert_path is not None:
        return certificates.load_certificate(read_small_file(cert_path, "certificate"))
    return fetch_certificate(open_store(ctx), properties.certificate_uuid)


def effective_trusted_ids(
    ctx: click.Context, trusted_ids: tuple[str, ...], trusted_files: tuple[str, ...]
) -> list[str]:
    """``--trusted``, else (when no ``--trusted-file`` either) ``[imgsign] trusted_certificate_ids``."""
    if trusted_ids or trusted_files or not has_config(ctx):
        return list(trusted_ids)
    return list(config(ctx).imgsign.trusted_certificate_ids)


def trust_anchors(ctx: click.Context, trusted_ids: tuple[str, ...], trusted_files: tuple[str, ...],
                   intermediate_files: tuple[str, ...], crl_files: tuple[str, ...],
                   require_crl: bool | None, max_chain_depth: int | None) -> chain.TrustAnchors | None:
    """What to validate the signing certificate's chain against; None when no trust is configured.

    The key manager is opened whenever a chain is to be validated, however the certificates were
    given: its stored CRLs always count, and a key manager that cannot be reached is an error
    (KeyManagerError), never a chain validated without them.
    """
    from imgsign import certificates, chain
    from imgsign.keymanager.anchors import fetch_trust_anchors

    settings = config(ctx).imgsign if has_config(ctx) else None
    ids = effective_trusted_ids(ctx, trusted_ids, trusted_files)
    if not ids and not trusted_files:
        if intermediate_files or crl_files or require_crl:
            raise click.UsageError("--intermediate, --crl and --require-crl need --trusted or --trusted-file")
        return None
    return fetch_trust_anchors(
        open_store(ctx), ids,
        trusted=[c for path in trusted_files
                 for c in certificates.load_certificates(read_small_file(path, "trusted certificates"))],
        intermediates=[c for path in intermediate_files
                       for c in certificates.load_certificates(read_small_file(path, "intermediate certificates"))],
        crls=[chain.load_crl(read_small_file(path, "CRL")) for path in crl_files],
        require_crls=require_crl if require_crl is not None else bool(settings and settings.require_crls),
        max_depth=max_chain_depth if max_chain_depth is not None else (settings.max_chain_depth if settings else None),
    )


def policy_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--policy FILE``: a trust policy file instead of ``--trusted`` (and of ``[imgsign] policy_file``)."""
    return click.option("--policy", "policy_path", type=click.Path(dir_okay=False), metavar="FILE",
                        help="Trust policy file (YAML or JSON): which signers are trusted for which images "
                             "(default: [imgsign] policy_file, else the flat --trusted options).")(func)


def base_certificate_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--base-certificate FILE``: a host-signed image's base certificate, for checks without a key manager."""
    return click.option("--base-certificate", "base_certificate_file", type=click.Path(dir_okay=False),
                        metavar="FILE",
                        help="Under a hostSigned trust policy rule: the certificate (PEM or DER) that signed the base "
                             "image the provenance names (default: fetched from the key manager by the id the "
                             "provenance names); it must be the one the provenance names by SHA-256.")(func)


def facts_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--owner``, ``--visibility``, ``--image-type``, ``--booting-project``: what a trust policy's scopes select
    on, given (or replacing what the properties document says)."""
    from imgsign.trust_policy import IMAGE_TYPES, VISIBILITIES

    for option in reversed((
        click.option("--owner", metavar="PROJECT_ID", help="The image's owner project (for the trust policy)."),
        click.option("--visibility", type=click.Choice(VISIBILITIES), help="The image's visibility."),
        click.option("--image-type", type=click.Choice(IMAGE_TYPES), help="The image's image_type."),
        click.option("--booting-project", metavar="PROJECT_ID",
                     help="The project booting the image (compute side; rules with bootingProject)."),
    )):
        func = option(func)
    return func


def image_facts(document: Any, owner: str | None = None, visibility: str | None = None,
                image_type: str | None = None, booting_project: str | None = None) -> trust_policy.ImageFacts:
    """What the trust policy selects on: from a Glance record or ``openstack image show -f json`` document,
    each given value replacing the document's."""
    import dataclasses

    from imgsign.trust_policy import ImageFacts

    facts = ImageFacts.from_record(document if isinstance(document, dict) else {})
    given = {"owner": owner, "visibility": visibility, "image_type": image_type, "booting_project": booting_project}
    return dataclasses.replace(facts, **{k: v for k, v in given.items() if v is not None})


def say_warnings(decision: trust_policy.Decision) -> None:
    """Each check the rule only logs, as a warning on stderr."""
    for finding in decision.warnings:
        say(f"imgsign: warning: trust policy rule {decision.rule.name} ({decision.rule.level.value}) logs: "
            f"{finding.check}: {finding.message}", err=True)


def load_trust_policy(path: str) -> trust_policy.TrustPolicy:
    """The trust policy in the file at ``path`` (InputError when unreadable, TrustPolicyError when invalid)."""
    from imgsign import trust_policy

    return trust_policy.load_policy_text(read_small_file(path, "trust policy"), path)


class TrustSetup:
    """The trust policy a command verifies under, and the trust anchors of each of its rules, loaded on
    first use (files relative to the policy file's directory; key-manager ids and stored CRLs from the
    key manager); :meth:`evidence` gathers a rule's evidence with them.  ``base_certificate_file``:
    ``--base-certificate``, the certificate a host-signed image's base was signed with (else the key
    manager's, by the id its provenance names)."""

    def __init__(self, ctx: click.Context, policy: trust_policy.TrustPolicy, base: str | None,
                 legacy: chain.TrustAnchors | None = None, intermediate_files: tuple[str, ...] = (),
                 crl_files: tuple[str, ...] = (), base_certificate_file: str | None = None) -> None:
        self.ctx = ctx
        self.policy = policy
        self.base = base
        self.legacy = legacy
        self.intermediate_files = intermediate_files
        self.crl_files = crl_files
        self.base_certificate_file = base_certificate_file
        self._anchors: dict[str, chain.TrustAnchors | None] = {}
        self._base_anchors: dict[str, chain.TrustAnchors | None] = {}

    @property
    def builtin(self) -> bool:
        return self.base is None

    def anchors_for(self, rule: trust_policy.Rule) -> chain.TrustAnchors | None:
        if self.builtin:
            return self.legacy
        if rule.name not in self._anchors:
            self._anchors[rule.name] = self._load(rule)
        return self._anchors[rule.name]

    def base_anchors_for(self, rule: trust_policy.Rule) -> chain.TrustAnchors | None:
        """The anchors of a ``hostSigned`` rule's ``baseTrustStores`` (None for any other rule)."""
        from imgsign.keymanager.anchors import base_anchors

        if self.builtin or rule.host_signed is None:
            return None
        if rule.name not in self._base_anchors:
            stores = rule.host_signed.base_trust_stores
            self._base_anchors[rule.name] = base_anchors(rule, self.base or ".", open_store(self.ctx) if any(
                s.key_manager_ids for s in stores) else None)
        return self._base_anchors[rule.name]

    def base_certificate(self, cert_id: str) -> x509.Certificate:
        """A host-signed image's base certificate: ``--base-certificate``, else the key manager's ``cert_id``."""
        from imgsign import certificates
        from imgsign.keymanager.anchors import fetch_certificate

        if self.base_certificate_file is not None:
            return certificates.load_certificate(read_small_file(self.base_certificate_file, "base certificate"))
        return fetch_certificate(open_store(self.ctx), cert_id)

    def evidence(self, rule: trust_policy.Rule, certificate: x509.Certificate, document: Mapping[str, object],
                 signature: bytes, *, image_id: str | None, policy: Policy,
                 tsa_roots: Sequence[x509.Certificate] = (),
                 ocsp: chain.OcspSource | None = None) -> trust_evidence.ImageEvidence:
        """The evidence ``rule`` is decided on (:func:`imgsign.trust_evidence.image_evidence`): the image's
        timestamp against ``tsa_roots``, its chain to the rule's anchors (``ocsp``, an OCSP client, asked for
        it) and, for a ``hostSigned`` rule, its provenance with the base anchors."""
        from imgsign import trust_evidence

        return trust_evidence.image_evidence(
            document, signature, certificate, rule, self.anchors_for(rule), tsa_roots, policy, ocsp=ocsp,
            base_anchors=self.base_anchors_for(rule), base_certificate=self.base_certificate, image_id=image_id)

    def tsa_roots_for(self, rule: trust_policy.Rule) -> list[x509.Certificate]:
        """The certificates of the rule's ``tsa`` trust stores."""
        from imgsign.keymanager.anchors import rule_tsa_roots

        return rule_tsa_roots(rule, self.base or ".", open_store(self.ctx) if any(
            s.key_manager_ids for s in rule.tsa_stores) else None)

    def _load(self, rule: trust_policy.Rule) -> chain.TrustAnchors | None:
        from imgsign.keymanager.anchors import rule_anchors

        return rule_anchors(rule, self.base or ".", open_store(self.ctx) if rule.ca_stores else None,
                            intermediate_files=self.intermediate_files, crl_files=self.crl_files)


def trust_setup(ctx: click.Context, policy_path: str | None, trusted_ids: tuple[str, ...],
                trusted_files: tuple[str, ...], intermediate_files: tuple[str, ...], crl_files: tuple[str, ...],
                require_crl: bool | None, max_chain_depth: int | None,
                base_certificate_file: str | None = None) -> TrustSetup:
    """The trust policy of ``--policy``, else of the flat options (``--trusted``, ``--trusted-file``), else of
    ``[imgsign] policy_file``, else the built-in policy of ``[imgsign] trusted_certificate_ids``."""
    import os

    from imgsign import trust_policy

    # --intermediate and --crl files are the command line's: relative to the working directory.
    extra_intermediates = tuple(os.path.abspath(p) for p in intermediate_files)
    extra_crls = tuple(os.path.abspath(p) for p in crl_files)
    if policy_path is not None:
        if trusted_ids or trusted_files or require_crl or max_chain_depth is not None:
            raise click.UsageError("--policy replaces --trusted, --trusted-file, --require-crl and "
                                   "--max-chain-depth (set them in the policy's trust stores)")
        policy = load_trust_policy(policy_path)
        return TrustSetup(ctx, policy, os.path.dirname(os.path.abspath(policy_path)), None, extra_intermediates,
                          extra_crls, base_certificate_file)
    settings = config(ctx).imgsign if has_config(ctx) else None
    configured = getattr(settings, "policy_file", None) if settings is not None else None
    if configured and not trusted_ids and not trusted_files:
        if settings is not None and list(settings.trusted_certificate_ids):
            raise errors.InputError("[imgsign] sets both policy_file and trusted_certificate_ids: set one "
                                    "(a policy's trust stores name the trusted certificates)")
        if require_crl or max_chain_depth is not None:
            raise click.UsageError("--require-crl and --max-chain-depth do not apply under [imgsign] "
                                   "policy_file (set them in the policy's trust stores)")
        policy = load_trust_policy(configured)
        return TrustSetup(ctx, policy, os.path.dirname(os.path.abspath(configured)), None, extra_intermediates,
                          extra_crls, base_certificate_file)
    anchors = trust_anchors(ctx, trusted_ids, trusted_files, intermediate_files, crl_files, require_crl,
                            max_chain_depth)
    builtin = trust_policy.builtin_policy(anchors is not None, bool(anchors and anchors.require_crls))
    return TrustSetup(ctx, builtin, None, anchors)


def load_properties(path: str) -> Any:
    """The properties mapping in a JSON file (the properties, or ``openstack image show -f json``)."""
    from imgsign.properties import properties_from_document

    return properties_from_document(load_properties_document(path))


def load_properties_document(path: str) -> Any:
    """The JSON document in a properties file, as it is (see :func:`load_properties`)."""
    data = read_small_file(path, "properties file")
    try:
        return json.loads(data)
    except RecursionError:
        raise errors.InputError(f"properties file {path} is not usable JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of thousands of digits
        raise errors.InputError(f"properties file {path} is not valid JSON ({str(exc)[:200]})") from None


class ImageDigest:
    """What :func:`image_digest` yields: call it for the digest; ``handle`` is the open image
    (None when it could not be opened: then the call raises why) and ``head`` its first bytes,
    as the hashing read them (valid once the digest was returned)."""

    def __init__(self, hashing: BackgroundDigest | None, handle: BinaryIO | None,
                 unreadable: errors.InputError | None = None) -> None:
        self._hashing = hashing
        self._unreadable = unreadable
        self.handle = handle

    def __call__(self) -> bytes:
        if self._hashing is None:
            raise self._unreadable or errors.InputError("the image was not opened")
        return self._hashing.result()

    @property
    def head(self) -> bytes:
        return self._hashing.head if self._hashing is not None else b""


@contextlib.contextmanager
def image_digest(path: str, hash_method: HashMethod, label: str, quiet: bool) -> Iterator[ImageDigest]:
    """Start hashing the image at ``path`` now, on a second core; the yielded call returns the digest.

    The command does its data-free work (imports, key, certificate, key manager) meanwhile.
    An image that cannot be opened or read is reported when the digest is asked for, where
    reading it in one go would have reported it, so errors keep their order and exit codes.
    """
    from imgsign.stream import BackgroundDigest

    with contextlib.ExitStack() as stack:
        try:
            handle, size = stack.enter_context(open_image(path))
        except errors.InputError as exc:
            yield ImageDigest(None, None, exc)
            return
        progress = stack.enter_context(progress_bar(size, label, quiet))
        hashing = BackgroundDigest(handle, hash_method, progress)
        stack.callback(hashing.cancel)
        yield ImageDigest(hashing, handle)


class KeyManagerId(click.ParamType[str]):
    """A key manager object id on the command line: 1-255 printable ASCII characters, no spaces."""

    name = "uuid"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from imgsign.properties import check_certificate_id

        try:
            return check_certificate_id(str(value))
        except errors.PropertiesError:
            self.fail(f"{str(value)[:80]!r} is not a key manager id (1-255 printable characters, no spaces)",
                      param, ctx)


KEY_MANAGER_ID = KeyManagerId()


class NonEmpty(click.ParamType[str]):
    """A text value that is not empty or only whitespace."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not str(value).strip():
            self.fail("must not be empty", param, ctx)
        return str(value)


NON_EMPTY = NonEmpty()


def trust_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--trusted``, ``--trusted-file``, ``--intermediate``, ``--crl``, ``--require-crl``, ``--max-chain-depth``:
    the arguments of :func:`trust_anchors`, as ``verify`` has them."""
    options = [
        click.option("--trusted", "trusted_ids", multiple=True, metavar="UUID", type=KEY_MANAGER_ID,
                     help="Require a chain to this trusted CA certificate in the key manager (repeatable; "
                          "default: [imgsign] trusted_certificate_ids)."),
        click.option("--trusted-file", "trusted_files", multiple=True, type=click.Path(dir_okay=False),
                     help="Require a chain to a trusted CA certificate in this PEM file (repeatable, bundles "
                          "allowed)."),
        click.option("--intermediate", "intermediate_files", multiple=True, type=click.Path(dir_okay=False),
                     help="Untrusted intermediate CA certificates (PEM bundle) to build the chain with."),
        click.option("--crl", "crl_files", multiple=True, type=click.Path(dir_okay=False),
                     help="Certificate revocation list, PEM or DER (repeatable; stored CRLs are used too)."),
        click.option("--require-crl", is_flag=True, default=None,
                     help="Refuse when an issuer on the chain has no CRL."),
        click.option("--max-chain-depth", type=click.IntRange(0, 255), help="Most intermediate CAs (default 8)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func

# --- certificates: the options keygen and cert issue/request share ---------------------------------------------


def subject_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--subject``, checked as an RFC 4514 name (a usage error if it is not one)."""
    from imgsign import keygen

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            keygen.parse_subject(value)
        except errors.InputError as exc:
            raise click.BadParameter(exc.message, ctx, param) from None
        return value

    return click.option("--subject", default=keygen.DEFAULT_SUBJECT, show_default=True, callback=check,
                        help="RFC 4514 subject name.")(func)


def issuer_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--ca-cert``, ``--ca-key``, ``--ca-passphrase-file`` and ``--days``: who issues a certificate, for how long."""
    from imgsign import keygen

    for option in reversed((
        click.option("--ca-cert", type=click.Path(dir_okay=False),
                     help="Issue the certificate from this CA (else self-signed)."),
        click.option("--ca-key", help="The CA's private key."),
        click.option("--ca-passphrase-file", type=click.Path(dir_okay=False), help="Passphrase of --ca-key."),
        click.option("--days", type=click.IntRange(min=1), default=keygen.DEFAULT_DAYS, show_default=True,
                     help="Validity in days."),
    )):
        func = option(func)
    return func


def check_issuer_options(opts: dict[str, Any]) -> None:
    """Usage errors in :func:`issuer_options` (before any file is read)."""
    if bool(opts["ca_cert"]) != bool(opts["ca_key"]):
        raise click.UsageError("--ca-cert and --ca-key go together")
    if opts["ca_passphrase_file"] and not opts["ca_key"]:
        raise click.UsageError("--ca-passphrase-file needs --ca-key")


def issuer_inputs(opts: dict[str, Any]) -> list[tuple[str | None, str]]:
    """The files of :func:`issuer_options`, as inputs an output must never overwrite."""
    return [(opts["ca_cert"], "CA certificate"), (opts["ca_key"], "CA private key"),
            (opts["ca_passphrase_file"], "CA passphrase file")]


def load_issuer(opts: dict[str, Any], ctx: click.Context | None = None) -> keygen.Issuer | None:
    """The CA of :func:`issuer_options` (its key loaded like every private key), checked; None: self-signed."""
    from imgsign import keygen
    from imgsign.certificates import load_certificate

    if not opts["ca_cert"]:
        return None
    ca_cert = load_certificate(read_small_file(opts["ca_cert"], "CA certificate"))
    ca_key, _ = load_key(opts["ca_key"], opts["ca_passphrase_file"], "CA private key", ctx=ctx)
    issuer = keygen.Issuer(ca_cert, ca_key)
    keygen.check_issuer(issuer)
    return issuer
