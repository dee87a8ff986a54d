"""Glance image-import plugins: verify staged image data, re-sign converted data.

Two taskflow plugins for Glance's interoperable image import (``glance-direct``,
``web-download``, ``glance-download``), registered in the entry-point group
``glance.image_import.plugins`` and enabled in ``glance-image-import.conf`` (or
``glance-api.conf``)::

    [image_import_opts]
    image_import_plugins = ['imgsign_verify', 'image_conversion', 'imgsign_resign']

This module imports Glance and taskflow; it is only ever loaded inside a Glance
process.

``imgsign_verify``
    Verifies the *staged* bytes (the file in Glance's staging area, before any
    conversion and before anything is written to a store) against the image's
    ``img_signature*`` properties with :func:`imgsign.glance.pipeline.verify_image`.
    Certificates come from the key manager Glance already uses for its own
    signature check: ``castellan.key_manager.API(CONF)`` with the importing user's
    request context, so ``[key_manager] backend = imgsign`` (or ``barbican``,
    ``vault``) needs no further configuration.  With
    ``[imgsign_import] trusted_certificate_ids`` the signer's certificate must also
    chain to one of those certificates (imgsign's path validation, CRLs from the
    key manager); with ``policy_file`` the trust policy rule that applies decides.
    As ``imgsign verify`` does, an RFC 3161 timestamp (``imgsign_tst_v1``) verified
    against the rule's ``tsa`` stores (``tsa_ca_file`` without a policy) lets a
    certificate that has expired since count, and revocation is checked by OCSP
    beside CRLs (the stapled ``imgsign_ocsp_v1`` first; ``ocsp``, ``ocsp_timeout``).
    An unsigned image passes unless ``require_signature = True``;
    an image with only some of the four properties never passes.  On failure the
    import task fails with a message ``imgsign_verify refused image <id>:
    <reason>: <detail>`` (visible in the image's task list, ``GET
    /v2/images/<id>/tasks``, and in Glance's log), the staged data is deleted, the
    image goes back to ``queued`` and nothing reaches a store.  It must come
    *before* ``image_conversion`` (and ``image_decompression``): those rewrite the
    bytes, after which the uploader's signature can no longer match.

``imgsign_resign`` (optional, after ``image_conversion``)
    Glance's ``image_conversion`` changes the bytes, so the uploader's signature
    no longer matches and Glance's own cursive check at store time (and Nova's at
    boot) would fail.  This task signs the converted bytes with a deployment
    service key held in the key manager (``[imgsign_import] service_key_id``,
    ``service_certificate_id``, both owned by ``service_project_id``; or
    ``service_key``, the ``pkcs11:`` URI of a key that never leaves a token), replaces
    the four ``img_signature*`` properties and keeps the uploader's in
    ``imgsign_original_*``.  A qcow2 result (``output_format = qcow2``), which Nova
    converts to raw again, also gets a raw-digest statement signed with the
    service key (``imgsign_raw_v1_*``, as ``imgsign sign`` makes it); the
    uploader's statement is dropped either way.  The service certificate is copied (once; an identical
    copy is reused) into the importing project so that key managers that isolate
    projects (imgsign's embedded store, Barbican without ACLs) let Glance's and
    Nova's checks, which fetch the certificate with the user's context, find it;
    ``copy_certificate_to_project = False`` uses ``service_certificate_id`` as is.
    With ``service_key = hashivault://NAME`` instead of ``service_key_id``
    the service key never leaves an OpenBao/Vault transit engine (settings in
    ``[imgsign_transit]``, imgsign.conf's ``[transit]`` options; ``VAULT_*`` or
    ``BAO_*`` in Glance's environment take precedence): only digests are sent.

    A compute host's signature (``imgsign gateway``'s snapshots) is never re-signed: converted host-signed
    data is refused (its signature vouches only inside the project that made it, under a hostSigned trust
    policy rule; the service key's would vouch for it wherever the service certificate is trusted).

    It re-signs only data whose original signature ``imgsign_verify`` verified
    earlier in the same import flow, for the same image, with the
    ``img_signature*`` properties unchanged since: with no ``imgsign_verify`` result
    a signed image is refused (an unsigned one passes through unsigned).  If the
    bytes are unchanged (the image already had the target format) the original
    signature is kept.  If a later step fails, the original properties are put
    back so the image can be staged and imported again.

Trust implications of re-signing
    A re-signed image no longer proves "these are the bytes the uploader
    signed"; it proves "Glance's import pipeline produced these bytes from data
    whose signature by the uploader's certificate it verified".  Whoever trusts
    the service certificate (Nova ``default_trusted_certificate_ids``,
    ``trusted_image_certificates``) therefore trusts this Glance deployment, its
    ``qemu-img`` conversion and everyone who can read the service key in the key
    manager, exactly as much as the original signers.  Keep the service key in a
    project of its own that only Glance can read, give the service certificate
    its own CA or name so it can be trusted (or not) separately, and enable
    ``trusted_certificate_ids`` here: without it, any certificate the uploader can
    put into their project is accepted as the original signer, and re-signing
    launders a self-signed signature into one by the deployment.
    ``imgsign_original_*`` records who signed the source but cannot be verified
    against the stored (converted) bytes; it is an audit trail, not a proof.  An
    attacker who can write Glance's staging directory or replace ``qemu-img`` can
    get their bytes re-signed; so can anyone with the service key.

Certificates are looked up with the importing user's context first, then (when
``service_project_id`` is set, or ``[key_manager] auth_type`` gives service
credentials) with the service context, so trusted CA certificates may live in
the service project.  Key-manager ids are assigned by the key manager, so a
user cannot shadow a service certificate id with an object of their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from glance.common import exception as glance_exception
from oslo_config import cfg
from oslo_context import context as oslo_context
from taskflow import task
from taskflow.patterns import linear_flow
from taskflow.types import failure

from imgsign._internal import redact
from imgsign._internal.untrusted import safe
from imgsign.conf.glance_import import GROUP, OPTS, TRANSIT_GROUP, TRANSIT_OPTS
from imgsign.conf.glance_import import check as check_options
from imgsign.conf.glance_import import list_opts as list_opts
from imgsign.errors import ImgsignError, KeyManagerError, ObjectNotFound, PropertiesError, UnsignedImage
from imgsign.glance.pipeline import ORIGINAL_PREFIX, is_signed
from imgsign.keymanager import CertificateStore
from imgsign.properties import NAMES as SIGNATURE_PROPERTIES
from imgsign.properties import SignatureProperties
from imgsign.raw_statement import PREFIX as RAW_STATEMENT_PREFIX

LOG = logging.getLogger(__name__)
CONF = cfg.CONF

#: Name under which imgsign_verify hands its result to imgsign_resign in the flow.
VERIFIED = "imgsign_verified"
SERVICE_CERTIFICATE_NAME = "imgsign import service certificate"

CONF.register_opts(OPTS, group=GROUP)
CONF.register_opts(TRANSIT_OPTS, group=TRANSIT_GROUP)


class ImgsignImportRefused(glance_exception.UploadException):
    """The import was refused by an imgsign plugin.

    An ``UploadException`` so that Glance's task executor records the message
    itself as the task's failure message (anything else becomes "Internal Error").
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- key manager access ---------------------------------------------------------------


class _FirstFound(CertificateStore):
    """Certificates from the first store that has them; CRLs from all of them."""

    def __init__(self, stores: list[CertificateStore]) -> None:
        self._stores = stores
        self.description = stores[0].description

    def get_certificate(self, cert_id: str) -> bytes:
        missing: ObjectNotFound | None = None
        for store in self._stores:
            try:
                return store.get_certificate(cert_id)
            except ObjectNotFound as exc:
                missing = missing or exc
        raise missing or ObjectNotFound(f"no certificate {cert_id}: no key manager configured")

    def get_crls(self) -> list[tuple[str, bytes]]:
        seen: dict[str, bytes] = {}
        for store in self._stores:
            for crl_id, der in store.get_crls():
                seen.setdefault(crl_id, der)
        return list(seen.items())


def _key_manager() -> Any:
    from castellan import key_manager

    try:
        return key_manager.API(CONF)
    except Exception as exc:  # noqa: BLE001 - stevedore/import/backend construction errors
        raise KeyManagerError(f"cannot start the castellan key manager ([key_manager] backend): "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None


def _describe(manager: Any, whose: str) -> str:
    from imgsign.keymanager.config import describe_backend

    try:
        backend = describe_backend(CONF, manager)
    except Exception:  # noqa: BLE001 - description only
        backend = "castellan key manager"
    return f"{backend} ({whose})"


class _ServiceContext(oslo_context.RequestContext):
    """A request context for the service project that never becomes the thread's current context.

    (A new oslo.context context installs itself as the current one when there is none, as in
    Glance's task threads; Glance's logging and notifications would then name the service project.)
    """

    def update_store(self) -> None:
        pass


def _service_context(required: bool) -> Any | None:
    """The context that reaches the service project's objects, or None if none is configured.

    With ``[key_manager] auth_type`` set, castellan's own credentials from Glance's configuration
    (e.g. ``keystone_password`` for Glance's service user, as a Barbican deployment needs);
    otherwise a request context for ``[imgsign_import] service_project_id`` (enough for key managers
    that trust the context's project, like imgsign's embedded store).
    """
    from castellan.common import utils as castellan_utils

    CONF.register_opts(castellan_utils.credential_opts, group=castellan_utils.OPT_GROUP)
    if CONF[castellan_utils.OPT_GROUP].auth_type:
        return castellan_utils.credential_factory(conf=CONF)
    project = CONF[GROUP].service_project_id
    if project:
        return _ServiceContext(project_id=project)
    if required:
        raise KeyManagerError(f"[{GROUP}] service_project_id is not set (nor [key_manager] auth_type): imgsign_resign "
                              f"cannot reach the service key")
    return None


def _stores(user_context: Any, require_service: bool = False) -> tuple[Any, Any]:
    """(the importing user's store, the service project's store or None)."""
    from imgsign.keymanager.castellan_store import CastellanStore

    manager = _key_manager()
    project = getattr(user_context, "project_id", None) or "?"
    user = CastellanStore(manager, user_context, _describe(manager, f"project {project}"))
    service_context = _service_context(required=require_service)
    service = None
    if service_context is not None:
        service_project = getattr(service_context, "project_id", None) or CONF[GROUP].service_project_id or "service"
        service = CastellanStore(manager, service_context, _describe(manager, f"service project {service_project}"))
    return user, service


# --- helpers ---------------------------------------------------------------------------


def _local_path(file_uri: str) -> str:
    if not file_uri.startswith("file://"):
        raise ImgsignImportRefused(f"imgsign: staged data at {file_uri!r} is not a local file (file:// staging "
                                   f"is required)", "input-error")
    return file_uri[len("file://"):]


def _signature_properties(properties: Mapping[str, Any]) -> dict[str, str]:
    return {name: properties[name] for name in SIGNATURE_PROPERTIES if name in properties}


def _remove_quietly(path: str | None) -> None:
    if not path:
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.error("imgsign: cannot remove staged data %s: %s", safe(path), safe(exc))


def _remember_secrets() -> None:
    """Glance's configuration files (and so ``[keystone_authtoken] password``, the service key's PIN...)
    are scrubbed from every message imgsign makes in this process (:mod:`imgsign._internal.redact`)."""
    try:
        files = [*(CONF.config_file or [])]
        for directory in CONF.config_dir or []:
            files.extend(os.path.join(directory, name) for name in sorted(os.listdir(directory))
                         if name.endswith(".conf"))
    except (cfg.Error, OSError, TypeError):
        return
    for path in files:
        redact.remember_file(path)


def _stores_list(stores: Any) -> list[str]:
    return [store for store in (stores or []) if store]


def _check_options(plugin: str, image_id: str) -> None:
    """Every ``[imgsign_import]`` and ``[imgsign_transit]`` value read at the start of a task: an invalid one
    refuses the import, naming the option (never its value), instead of failing later or passing."""
    try:
        check_options(CONF)
    except ImgsignError as error:
        refusal = _refusal(plugin, image_id, error)
        LOG.error("%s", refusal.msg)
        raise refusal from None


def _refusal(plugin: str, image_id: str, error: ImgsignError) -> ImgsignImportRefused:
    return ImgsignImportRefused(f"{plugin} refused image {image_id}: {error.reason}: {error.message}", error.reason)


# --- imgsign_verify --------------------------------------------------------------------


class _VerifyStaged(task.Task):
    """Verify the staged data against the image's img_signature* properties."""

    default_provides = VERIFIED

    def __init__(self, context: Any, task_id: str, task_type: str, action_wrapper: Any, stores: Any) -> None:
        self.context = context
        self.task_id = task_id
        self.task_type = task_type
        self.action_wrapper = action_wrapper
        self.stores = _stores_list(stores)
        self.image_id = action_wrapper.image_id
        self.staged_path: str | None = None
        super().__init__(name=f"{task_type}-Imgsign_Verify-{task_id}")

    def execute(self, file_path: str) -> dict[str, Any]:
        from imgsign.glance.pipeline import verify_image

        self.staged_path = _local_path(file_path)
        _check_options("imgsign_verify", self.image_id)
        with self.action_wrapper as action:
            properties = action.image_extra_properties
            facts = _image_facts(action, self.image_id)
        selection = None
        if CONF[GROUP].policy_file:
            try:
                selection = _select(facts)
            except ImgsignError as error:
                refused = _refusal("imgsign_verify", self.image_id, error)
                LOG.error("%s", refused.msg)
                raise refused from None
            if selection.rule.level.value == "skip":
                LOG.info("imgsign_verify: image %s: trust policy rule %s skips verification", self.image_id,
                         selection.rule.name)
                return {"image_id": self.image_id, "task_id": self.task_id, "signed": False, "skipped": True}
        if selection is not None and not is_signed(properties):
            from imgsign.trust_policy import Evidence, decide

            decision = decide(selection, Evidence(signed=False))
            if not decision.allowed and decision.error is not None:
                unsigned = _refusal("imgsign_verify", self.image_id, decision.error)
                LOG.error("%s", unsigned.msg)
                raise unsigned
            LOG.warning("imgsign_verify: image %s is not signed; trust policy rule %s (%s) allows it", self.image_id,
                        selection.rule.name, selection.rule.level.value)
            return {"image_id": self.image_id, "task_id": self.task_id, "signed": False}
        if not is_signed(properties):
            if CONF[GROUP].require_signature:
                unsigned = _refusal("imgsign_verify", self.image_id, UnsignedImage(
                    f"the image has no img_signature* properties and [{GROUP}] require_signature is set"))
                LOG.error("%s", unsigned.msg)
                raise unsigned
            LOG.info("imgsign_verify: image %s is not signed; passing it unchecked", self.image_id)
            return {"image_id": self.image_id, "task_id": self.task_id, "signed": False}
        refusal: ImgsignImportRefused | None = None
        try:
            user, service = _stores(self.context)
            store = _FirstFound([user, service] if service is not None else [user])
            with open(self.staged_path, "rb") as data:
                revocation = {"ocsp": CONF[GROUP].ocsp, "ocsp_timeout": CONF[GROUP].ocsp_timeout}
                if selection is not None:
                    verified = verify_image(data, properties, store, selection=selection,
                                            rule_anchors=_rule_anchors_from(store),
                                            base_anchors=_rule_anchors_from(store, base=True),
                                            image_id=self.image_id, rule_tsa_roots=_rule_tsa_roots_from(store),
                                            **revocation)
                else:
                    verified = verify_image(data, properties, store,
                                            trusted_ids=tuple(CONF[GROUP].trusted_certificate_ids),
                                            require_crls=CONF[GROUP].require_crls, tsa_roots=_flat_tsa_roots(),
                                            **revocation)
        except ImgsignError as error:
            refusal = _refusal("imgsign_verify", self.image_id, error)
        except OSError as error:
            refusal = ImgsignImportRefused(f"imgsign_verify refused image {self.image_id}: input-error: cannot read "
                                           f"the staged data: {error.strerror or error}", "input-error")
        if refusal is not None:
            LOG.error("%s", refusal.msg)
            raise refusal
        from imgsign.certificates import describe
        from imgsign.trust_evidence import signer_identity
        from imgsign.trust_policy import is_host_certificate

        if verified.decision is not None:
            for finding in verified.decision.warnings:
                LOG.warning("imgsign_verify: image %s: trust policy rule %s (%s) logs: %s: %s", self.image_id,
                            verified.decision.rule.name, verified.decision.rule.level.value, finding.check,
                            safe(finding.message))
        stamp = verified.timestamp or {}
        LOG.info("imgsign_verify: image %s: signature by %s verified over %d staged bytes%s%s%s", self.image_id,
                 describe(verified.certificate), verified.size,
                 f" (chain to {safe(verified.path[-1])})" if verified.path else "",
                 f"; timestamped {stamp.get('gen_time')}" if stamp.get("status") == "valid" else "",
                 "; OCSP: " + ", ".join(f"{safe(str(a.get('certificate')))} {a.get('status')} ({a.get('source')})"
                                        for a in verified.ocsp) if verified.ocsp else "")
        return {
            "image_id": self.image_id,
            "task_id": self.task_id,
            "signed": True,
            # As the image has them (not re-encoded), to compare with the image's later.
            "properties": _signature_properties(properties),
            "digest": verified.digest.hex(),
            "size": verified.size,
            "signer": describe(verified.certificate),
            # A compute host's signature (trusted only under a hostSigned rule): imgsign_resign never launders it.
            "host_signed": bool(verified.decision is not None and verified.decision.rule.host_signed is not None)
            or is_host_certificate(signer_identity(verified.certificate)),
        }

    def revert(self, result: Any = None, **kwargs: Any) -> None:
        if not isinstance(result, failure.Failure):
            return  # a later step failed: Glance and that step clean up
        # This task refused the image: nothing else ran, so drop the staged data and put the image
        # back the way Glance does after a failed conversion.
        _remove_quietly(self.staged_path)
        try:
            with self.action_wrapper as action:
                action.set_image_attribute(status="queued")
                if self.stores:
                    action.remove_importing_stores(self.stores)
                    action.add_failed_stores(self.stores)
        except Exception as exc:  # noqa: BLE001 - revert must not mask the refusal
            LOG.warning("imgsign_verify: could not reset image %s after refusing it: %s", safe(self.image_id),
                        safe(redact.scrub(str(exc))))


def _image_facts(action: Any, image_id: str) -> Any:
    """The image's owner, visibility and image_type, as the trust policy's scopes select on them."""
    from imgsign.trust_policy import ImageFacts

    image = getattr(action, "_image", None)  # glance's _ImportActions keeps the image it wraps
    owner = getattr(image, "owner", None)
    visibility = getattr(image, "visibility", None)
    extra = getattr(image, "extra_properties", None) or {}
    image_type = extra.get("image_type") if hasattr(extra, "get") else None
    return ImageFacts(owner if isinstance(owner, str) else None, visibility if isinstance(visibility, str) else None,
                      image_type if isinstance(image_type, str) and image_type else "image", None, image_id)


def _select(facts: Any) -> Any:
    """The trust policy rule for ``facts`` (the policy file is read at each import: edits apply at once).

    Refuses (never guesses) when Glance did not give the image's owner and visibility."""
    from imgsign._internal.files import read_small_file
    from imgsign.errors import InputError
    from imgsign.trust_policy import load_policy_text, select

    path = CONF[GROUP].policy_file
    policy = load_policy_text(read_small_file(path, "trust policy"), path)
    if facts.owner is None or facts.visibility is None:
        raise InputError("cannot read the image's owner and visibility from Glance: the trust policy cannot "
                         "choose its rule")
    return select(policy, facts)


def _rule_anchors_from(store: CertificateStore, base: bool = False) -> Callable[[Any], Any]:
    """The anchors of a rule's CA stores, or with ``base`` of a ``hostSigned`` rule's ``baseTrustStores`` (the
    snapshot's base was trusted when it was made): files relative to the policy file, ids from ``store``."""
    def load(rule: Any) -> Any:
        from imgsign.keymanager.anchors import base_anchors, rule_anchors

        return (base_anchors if base else rule_anchors)(
            rule, os.path.dirname(os.path.abspath(CONF[GROUP].policy_file)), store)

    return load


def _rule_tsa_roots_from(store: CertificateStore) -> Callable[[Any], Any]:
    """The certificates of a rule's ``tsa`` trust stores (files relative to the policy file, key-manager ids)."""
    def load(rule: Any) -> Any:
        from imgsign.keymanager.anchors import rule_tsa_roots

        return rule_tsa_roots(rule, os.path.dirname(os.path.abspath(CONF[GROUP].policy_file)), store)

    return load


def _flat_tsa_roots() -> list[Any]:
    """``[imgsign_import] tsa_ca_file``: the built-in policy's TSA store (none: tokens are not checked)."""
    from imgsign._internal.files import read_small_file
    from imgsign.certificates import load_certificates

    path = CONF[GROUP].tsa_ca_file
    return load_certificates(read_small_file(path, f"TSA certificates ([{GROUP}] tsa_ca_file)")) if path else []


def get_verify_flow(**kwargs: Any) -> linear_flow.Flow:
    """Glance plugin ``imgsign_verify``: verify the staged data before anything else touches it.

    :param context: request context of the import
    :param task_id: the import task's id
    :param task_type: the import task's type
    :param action_wrapper: glance's ImportActionWrapper for the image
    :param backend: the target stores
    """
    _remember_secrets()
    task_type = kwargs.get("task_type")
    return linear_flow.Flow(task_type).add(
        _VerifyStaged(kwargs.get("context"), str(kwargs["task_id"]), str(task_type), kwargs.get("action_wrapper"),
                      kwargs.get("backend")))


# --- imgsign_resign --------------------------------------------------------------------


class _ResignConverted(task.Task):
    """Re-sign the (converted) data that goes to the stores with the deployment's service key."""

    def __init__(self, context: Any, task_id: str, task_type: str, action_wrapper: Any) -> None:
        self.context = context
        self.task_id = task_id
        self.task_type = task_type
        self.action_wrapper = action_wrapper
        self.image_id = action_wrapper.image_id
        super().__init__(name=f"{task_type}-Imgsign_Resign-{task_id}")

    def _refuse(self, message: str, reason: str = "not-verified") -> ImgsignImportRefused:
        refusal = ImgsignImportRefused(f"imgsign_resign refused image {self.image_id}: {reason}: {message}", reason)
        LOG.error("%s", refusal.msg)
        return refusal

    def execute(self, file_path: str, imgsign_verified: dict[str, Any] | None = None) -> dict[str, str] | None:
        _check_options("imgsign_resign", self.image_id)
        with self.action_wrapper as action:
            current = _signature_properties(action.image_extra_properties)
        verified = imgsign_verified
        if verified is None:
            if current:
                raise self._refuse("imgsign_verify did not run earlier in this import, so the original signature "
                                   "was not verified (list imgsign_verify before image_conversion and imgsign_resign "
                                   "in [image_import_opts] image_import_plugins)")
            LOG.info("imgsign_resign: image %s is not signed; nothing to re-sign", self.image_id)
            return None
        if verified.get("image_id") != self.image_id or verified.get("task_id") != self.task_id:
            raise self._refuse("the imgsign_verify result belongs to another image or import")
        if not verified.get("signed"):
            if current and verified.get("skipped"):
                raise self._refuse("the trust policy rule for this image skips verification, and imgsign_resign "
                                   "re-signs only data whose signature was verified")
            if current:
                raise self._refuse("img_signature* properties appeared after imgsign_verify passed the image as "
                                   "unsigned")
            LOG.info("imgsign_resign: image %s is not signed; nothing to re-sign", self.image_id)
            return None
        if current != verified["properties"]:
            raise self._refuse("the img_signature* properties changed after imgsign_verify checked them")

        original = SignatureProperties.from_mapping(verified["properties"])
        if verified.get("host_signed"):
            self._keep_host_signature(_local_path(file_path), original, bytes.fromhex(verified["digest"]))
            return None
        try:
            new = self._sign(_local_path(file_path), original, bytes.fromhex(verified["digest"]))
        except ImgsignError as error:
            raise self._refuse(error.message, error.reason) from None
        except OSError as error:
            raise self._refuse(f"cannot read the converted data: {error.strerror or error}", "input-error") from None
        if new is None:
            LOG.info("imgsign_resign: image %s: the data is unchanged since imgsign_verify; keeping the original "
                     "signature", self.image_id)
            return None

        with self.action_wrapper as action:
            if _signature_properties(action.image_extra_properties) != verified["properties"]:
                raise self._refuse("the img_signature* properties changed while re-signing")
            previous = {name: value for name, value in action.image_extra_properties.items()
                        if name in SIGNATURE_PROPERTIES or name.startswith((ORIGINAL_PREFIX, RAW_STATEMENT_PREFIX))}
            action.set_image_extra_properties(new)
            # The uploader's raw-digest statement binds the uploader's signature, which no longer covers
            # these bytes: it would only make a later adoption refuse the image. A qcow2 result has a new
            # one, signed with the service key, in ``new``. (Put back by revert.)
            for name in [n for n in action.image_extra_properties
                         if n.startswith(RAW_STATEMENT_PREFIX) and n not in new]:
                action.pop_extra_property(name)
        LOG.info("imgsign_resign: image %s re-signed with service certificate %s (as %s); original signer %s kept in "
                 "%s* properties", self.image_id, CONF[GROUP].service_certificate_id,
                 new["img_signature_certificate_uuid"], verified.get("signer"), ORIGINAL_PREFIX)
        return previous

    def _keep_host_signature(self, path: str, original: SignatureProperties, verified_digest: bytes) -> None:
        """A host-signed image (a snapshot ``imgsign gateway`` signed) is never re-signed: its signature vouches
        only inside the project that made it, under a hostSigned rule, and the service key's would vouch for the
        converted data everywhere the service certificate is trusted.  Unchanged data keeps the host's signature;
        converted data is refused."""
        from imgsign.glance.pipeline import data_digest

        try:
            with open(path, "rb") as data:
                unchanged = data_digest(data, original.hash_method) == verified_digest
        except OSError as error:
            raise self._refuse(f"cannot read the converted data: {error.strerror or error}", "input-error") from None
        if not unchanged:
            raise self._refuse("the image was signed by a compute host, whose signature vouches only inside the "
                               "project that made it (a hostSigned trust policy rule): its converted data is not "
                               "re-signed with the service key, which would make it trusted beyond that project "
                               "(import host-signed snapshots in the format image_conversion produces)",
                               "policy-refused")
        LOG.info("imgsign_resign: image %s: host-signed and unchanged since imgsign_verify; keeping its signature",
                 self.image_id)

    def _sign(self, path: str, original: SignatureProperties, verified_digest: bytes) -> dict[str, str] | None:
        """New properties for the data at ``path``, or None if it is still exactly the verified data."""
        from imgsign.certificates import load_certificate
        from imgsign.glance.pipeline import open_service_key, resign

        options = CONF[GROUP]
        if not (options.service_key or options.service_key_id) or not options.service_certificate_id:
            raise PropertiesError(f"[{GROUP}] service_key_id (or service_key) and service_certificate_id must be "
                                  f"set to re-sign converted images")
        user, service = _stores(self.context, require_service=True)
        certificate_der = service.get_certificate(options.service_certificate_id)
        certificate = load_certificate(certificate_der)
        key = open_service_key(options.service_key, options.service_key_id, service.get_private_key, f"[{GROUP}]",
                               conf=_BackendSections())

        certificate_id: str | Callable[[], str] = str(options.service_certificate_id)
        if options.copy_certificate_to_project:
            # Stored only once the data is signed; before the raw-digest statement, which names it.
            def certificate_id() -> str:
                return self._certificate_for_project(user, certificate_der)
        try:
            with open(path, "rb") as data:
                # resign fails fast (key/certificate mismatch, dates, key size) before reading any data; a qcow2
                # result (output_format = qcow2) also gets a raw-digest statement, as `imgsign sign` gives it.
                return resign(data, key, certificate_id, original, certificate=certificate,
                              verified_digest=verified_digest)
        finally:
            key.close()  # a token key's session is not left open between imports

    def _certificate_for_project(self, user: Any, certificate_der: bytes) -> str:
        """The id of the service certificate as the importing project sees it (stored there once if needed)."""
        user_project = getattr(self.context, "project_id", None)
        if user_project and user_project == CONF[GROUP].service_project_id:
            return str(CONF[GROUP].service_certificate_id)
        found = user.find_certificate(certificate_der)
        if found:
            return str(found)
        stored = user.store_certificate(certificate_der, name=SERVICE_CERTIFICATE_NAME)
        LOG.info("imgsign_resign: stored a copy of the service certificate in project %s as %s", user_project, stored)
        return str(stored)

    def revert(self, result: Any = None, **kwargs: Any) -> None:
        if not isinstance(result, dict):
            return  # refused, or nothing was changed
        # A later step (a store upload) failed: put the uploader's signature back, so the original data can
        # be staged and imported again.
        try:
            with self.action_wrapper as action:
                for name in list(action.image_extra_properties):
                    if name.startswith((ORIGINAL_PREFIX, RAW_STATEMENT_PREFIX)) and name not in result:
                        action.pop_extra_property(name)
                action.set_image_extra_properties(result)
        except Exception as exc:  # noqa: BLE001 - revert must not mask the original failure
            LOG.warning("imgsign_resign: could not restore the original signature of image %s: %s",
                        safe(self.image_id), safe(redact.scrub(str(exc))))


class _BackendSections:
    """The key backends' sections as imgsign.conf names them: Glance's ``[imgsign_transit]`` is
    ``[transit]`` (a PKCS#11 URI carries its own module path and PIN source)."""

    @property
    def transit(self) -> Any:
        return CONF[TRANSIT_GROUP]


def get_resign_flow(**kwargs: Any) -> linear_flow.Flow:
    """Glance plugin ``imgsign_resign``: re-sign converted data whose original signature was verified.

    :param context: request context of the import
    :param task_id: the import task's id
    :param task_type: the import task's type
    :param action_wrapper: glance's ImportActionWrapper for the image
    """
    _remember_secrets()
    task_type = kwargs.get("task_type")
    return linear_flow.Flow(task_type).add(
        _ResignConverted(kwargs.get("context"), str(kwargs["task_id"]), str(task_type), kwargs.get("action_wrapper")))
