"""The ``imgsign`` command line: a thin layer over the library.

One module per command or command group (``sign``, ``verify``, ``keygen``,
``cert``, ``key``, ``crl``, ``boot``, ``audit``, ``gateway``), each imported only when its command
runs, so a short run loads only what it needs; helpers they share are in
:mod:`imgsign.cli._common`.  Every failure is one
:class:`~imgsign.errors.ImgsignError` subclass and exits with that class's code
(doc/source/specs/exit-codes.md); no traceback reaches the user unless ``--debug``
(or ``IMGSIGN_DEBUG=1``) asks for one, with debug logging, for support.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from imgsign import errors
from imgsign.cli._common import debugging, fail, print_traceback, say

#: Every command, as "module:attribute"; a module is imported only when its command runs.
COMMANDS = {
    "sign": "imgsign.cli.sign:sign_command",
    "verify": "imgsign.cli.verify:verify_command",
    "upload": "imgsign.cli.upload:upload_command",
    "keygen": "imgsign.cli.keygen:keygen_command",
    "cert": "imgsign.cli.cert:cert_group",
    "key": "imgsign.cli.key:key_group",
    "crl": "imgsign.cli.crl:crl_group",
    "boot": "imgsign.cli.boot:boot_group",
    "audit": "imgsign.cli.audit:audit_command",
    "policy": "imgsign.cli.policy:policy_group",
    "gateway": "imgsign.cli.gateway:gateway_group",
}


class _Group(click.Group):
    """Loads commands lazily; turns imgsign errors into a one-line message and the class's exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.ImgsignError as exc:
            fail(exc)
        except KeyboardInterrupt:
            click.echo("imgsign: interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - an internal error: one line (--debug: its traceback too)
            debug = debugging(ctx)
            if debug:
                print_traceback(exc)
            if type(exc).__module__.startswith("oslo_config"):  # a value of imgsign.conf, read where it is used
                from imgsign.keymanager.config import describe_error

                fail(errors.InputError(f"imgsign.conf is not usable: {describe_error(exc)}"))
            from imgsign._internal.untrusted import one_line

            say(f"imgsign: internal error: {type(exc).__name__}: {one_line(exc)}"
                + ("" if debug else " (--debug shows details)"), err=True)
            sys.exit(1)


def enable_debug_logging() -> None:
    """``--debug``: every logger's records at DEBUG and above on stderr, through
    :class:`imgsign._internal.debug_log.LogFilter` (no request bodies, no remembered secrets)."""
    import logging

    from imgsign._internal.debug_log import LogFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(LogFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    logging.getLogger(__name__).debug("imgsign %s, Python %s", _version(), sys.version.split()[0])


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("imgsign")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``imgsign --version``: imgsign's version and the crypto it runs on."""
    if not value or ctx.resilient_parsing:
        return
    import importlib.metadata
    import shutil
    import subprocess

    from cryptography import __version__ as cryptography_version
    from cryptography.hazmat.backends.openssl.backend import backend

    command = shutil.which(os.environ.get("IMGSIGN_OPENSSL") or "openssl")
    system = "not found"
    if command:
        try:
            system = subprocess.run([command, "version"], capture_output=True, text=True, timeout=10,
                                    stdin=subprocess.DEVNULL, check=False).stdout.strip() or "no answer"
        except (OSError, subprocess.SubprocessError) as exc:
            system = f"unusable ({type(exc).__name__})"
    click.echo(f"imgsign {importlib.metadata.version('imgsign')}\n"
               f"cryptography {cryptography_version} with {backend.openssl_version_text()}\n"
               f"openssl command (ECC_SECT* keys, DSA without cryptography): {system}")
    ctx.exit()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show imgsign's, cryptography's and OpenSSL's versions and exit.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no success messages.")
@click.option("--debug", is_flag=True, envvar="IMGSIGN_DEBUG",
              help="Debug logging and full tracebacks on stderr, for support (secrets are still never shown). "
                   "Also $IMGSIGN_DEBUG=1.")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False),
              help="imgsign.conf (default: $IMGSIGN_CONFIG, /etc/imgsign/imgsign.conf, "
                   "~/.config/imgsign/imgsign.conf).")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, debug: bool, config_file: str | None) -> None:
    """Sign OpenStack VM images and verify them (img_signature* properties)."""
    ctx.obj = {"quiet": quiet, "config_file": config_file, "debug": debug}
    if debug:
        enable_debug_logging()


def main() -> None:
    """Console-script entry point: everything it prints passes :class:`~imgsign._internal.untrusted.SafeStream`
    (control characters shown as escapes; on stderr, secret option values scrubbed)."""
    from imgsign._internal import redact
    from imgsign._internal.untrusted import SafeStream

    redact.remember_environment()
    if sys.stdout is not None:
        sys.stdout = SafeStream(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = SafeStream(sys.stderr, scrub=redact.scrub)
    cli(prog_name="imgsign")
