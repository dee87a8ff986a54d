"""What the commands that talk to a cloud share: ``--os-cloud``, the Keystone session, the Glance client.

A command has a Keystone session when it is given ``--os-cloud``/``--os-region-name``, when it
talks to Glance anyway (``upload``, ``audit``, ``verify --image``), or when ``OS_CLOUD`` or
``OS_AUTH_URL`` is set (the ``openstack`` CLI's own credentials, e.g. for
``imgsign sign ... | xargs openstack image create``). The key manager then works in that
session's project (see :func:`imgsign.keymanager.config.resolve_project`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from imgsign import errors

if TYPE_CHECKING:
    from imgsign._internal.glance_api import GlanceClient
    from imgsign._internal.openstack_auth import CloudSession
    from imgsign.keymanager.config import KeystoneScope

#: Environment variables that give the ``openstack`` CLI (and so imgsign) credentials without --os-cloud.
CLOUD_VARIABLES = ("OS_CLOUD", "OS_AUTH_URL")


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.find_root().obj[f"cloud_option:{param.name}"] = value
    return value


def cloud_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--os-cloud`` and ``--os-region-name``, as the ``openstack`` CLI has them."""
    func = click.option("--os-region-name", "os_region_name", metavar="REGION", callback=_remember,
                        help="Region of the image service (default: the cloud's, or $OS_REGION_NAME).")(func)
    return click.option("--os-cloud", "os_cloud", metavar="CLOUD", callback=_remember,
                        help="Cloud in clouds.yaml (default: $OS_CLOUD, else the OS_* variables).")(func)


def cloud_session(ctx: click.Context) -> CloudSession:
    """The command's Keystone session (made once), as the ``openstack`` CLI would make it for its options."""
    from imgsign._internal.openstack_auth import session_from_cloud

    root = ctx.find_root()
    if "cloud_session" not in root.obj:
        root.obj["cloud_session"] = session_from_cloud(root.obj.get("cloud_option:os_cloud"),
                                                       region_name=root.obj.get("cloud_option:os_region_name"))
    session: CloudSession = root.obj["cloud_session"]
    return session


def glance_client(ctx: click.Context) -> GlanceClient:
    """A Glance client authenticated as the ``openstack`` CLI would be for the command's options."""
    return cloud_session(ctx).glance()


def has_cloud(ctx: click.Context) -> bool:
    """Does the command have a Keystone session: --os-cloud, a Glance command, or OS_CLOUD/OS_AUTH_URL set?"""
    root = ctx.find_root()
    return ("cloud_session" in root.obj or root.obj.get("cloud_option:os_cloud") is not None
            or any(os.environ.get(name) for name in CLOUD_VARIABLES))


def keystone_scope(ctx: click.Context) -> KeystoneScope | None:
    """The project of the command's Keystone token, or None when the command has no Keystone session."""
    from imgsign.keymanager.config import KeystoneScope

    root = ctx.find_root()
    if "keystone_scope" not in root.obj:
        scope = None
        if has_cloud(ctx):
            try:
                cloud = cloud_session(ctx)
            except errors.MissingExtra:
                if "cloud_session" in root.obj or root.obj.get("cloud_option:os_cloud") is not None:
                    raise
                # Only OS_CLOUD/OS_AUTH_URL, for the openstack CLI: imgsign can do without, and says so.
                click.echo("imgsign: warning: OS_CLOUD/OS_AUTH_URL is set, but without openstacksdk "
                           "(pip install 'imgsign[openstack]') imgsign cannot learn the token's project: the key "
                           "manager uses [imgsign] project_id or 'default'", err=True)
                cloud = None
            if cloud is not None:
                scope = KeystoneScope.of(cloud.session, cloud.cloud)
        root.obj["keystone_scope"] = scope
    found: KeystoneScope | None = root.obj["keystone_scope"]
    return found
