"""OpenStack credentials the way the ``openstack`` CLI finds them: clouds.yaml and ``OS_*``.

This uses openstacksdk's ``openstack.config``, the loader the ``openstack`` CLI
itself runs, so a cloud that works with ``openstack --os-cloud NAME image list``
works here with the same files and variables: ``clouds.yaml`` (and
``secure.yaml``, ``clouds-public.yaml``) in the current directory,
``~/.config/openstack`` and ``/etc/openstack`` or ``$OS_CLIENT_CONFIG_FILE``;
``--os-cloud``/``$OS_CLOUD`` to choose one; or ``OS_AUTH_URL``/``OS_USERNAME``/
``OS_TOKEN``... when no cloud is named; every keystoneauth auth type; per-service
``image_endpoint_override``, ``interface`` and ``region_name``.

openstacksdk is the optional extra ``imgsign[openstack]`` (only the Glance
commands need it); without it :class:`~imgsign.errors.MissingExtra` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgsign import errors

if TYPE_CHECKING:
    from keystoneauth1.session import Session

    from imgsign._internal.glance_api import GlanceClient

EXTRA = "openstack"


@dataclass(frozen=True)
class CloudSession:
    """An authenticated keystoneauth session and where its image service is."""

    session: Session
    #: The cloud's name in clouds.yaml ("envvars" for ``OS_*`` variables alone).
    cloud: str
    endpoint_override: str | None
    interface: str | None
    region_name: str | None

    def glance(self) -> GlanceClient:
        """A Glance client on this session."""
        from imgsign._internal.glance_api import GlanceClient

        return GlanceClient(self.session, endpoint_override=self.endpoint_override, interface=self.interface,
                            region_name=self.region_name)


def session_from_cloud(cloud: str | None, *, region_name: str | None = None, **options: Any) -> CloudSession:
    """The session for ``cloud`` (None: ``$OS_CLOUD``, else the ``OS_*`` variables, else the only cloud).

    ``options`` are further openstacksdk settings (e.g. ``interface``, ``verify``), as the CLI's
    ``--os-*`` options would give them. Unknown clouds and unusable settings are
    :class:`~imgsign.errors.InputError`; a missing openstacksdk is :class:`~imgsign.errors.MissingExtra`.
    """
    try:
        import openstack.config
        import openstack.exceptions
        from keystoneauth1 import exceptions as ks
    except ImportError:
        raise errors.MissingExtra(
            f"talking to Glance needs openstacksdk: pip install 'imgsign[{EXTRA}]'") from None
    if region_name is not None:
        options["region_name"] = region_name
    remember_secrets()
    named = f"cloud {cloud!r}" if cloud else "the OpenStack credentials (OS_CLOUD, OS_* or clouds.yaml)"
    try:
        config = openstack.config.OpenStackConfig()
        region = config.get_one(cloud=cloud, **options)
        session = region.get_session()
    except (openstack.exceptions.ConfigException, ks.ClientException, OSError, ValueError, TypeError) as exc:
        # TypeError: an auth plugin given a setting it does not take (e.g. a username for "token")
        raise errors.InputError(f"cannot use {named}: {_one_line(exc)}") from None
    except Exception as exc:  # a YAML error quotes the line it could not read
        if type(exc).__module__.split(".")[0] != "yaml":
            raise
        raise errors.InputError(f"cannot use {named}: a clouds.yaml or secure.yaml file is not valid YAML "
                                f"({type(exc).__name__})") from None
    interface = region.get_interface("image")
    if isinstance(interface, list):  # a preference list: keystoneauth takes the first it finds
        interface = interface[0] if interface else None
    return CloudSession(session, str(region.name), region.get_endpoint("image"), interface,
                        region.get_region_name("image") or None)


def remember_secrets() -> None:
    """Every secret openstacksdk may read (clouds.yaml, secure.yaml, ``OS_*``), scrubbed from messages
    from now on (:mod:`imgsign._internal.redact`)."""
    import os

    from openstack.config import loader

    from imgsign._internal import redact

    redact.remember_environment()
    for path in (os.environ.get("OS_CLIENT_CONFIG_FILE"), os.environ.get("OS_CLIENT_SECURE_FILE"),
                 *loader.CONFIG_FILES, *loader.SECURE_FILES):
        if path and os.path.isfile(path):
            redact.remember_file(path)


def _one_line(exc: BaseException) -> str:
    from imgsign._internal.untrusted import one_line

    text = one_line(exc)
    return text if text else type(exc).__name__
