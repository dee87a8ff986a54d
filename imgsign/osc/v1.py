"""``openstack image sign``, ``openstack image verify`` and ``openstack image audit``.

Each command takes over the options of its ``imgsign`` counterpart (:func:`add_options` reads them from
the click command: names, help, choices and checks stay one definition) except those OSC has itself
(``--os-cloud``, ``-f``, ``-q``), and runs the same code on OSC's session. What they print goes
through OSC's formatters (``-f json|yaml|table|value|shell``, ``-c``); the exit status is imgsign's
documented code (0: valid/passed; e.g. 50 for a signature that does not match, 75 for a failed audit).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import click
from osc_lib.command import command

from imgsign import errors

#: Options of imgsign's commands that OSC has in its own way, or that make no sense under it.
_OSC_HAS = {"os_cloud", "os_region_name", "fmt", "legacy_json", "quiet", "output", "force"}


def add_options(parser: argparse.ArgumentParser, click_command: click.Command,
                skip: Iterable[str] = ()) -> argparse.ArgumentParser:
    """Add ``click_command``'s options (not its arguments, not ``skip``) to ``parser`` under their names."""
    group = parser.add_argument_group(f"imgsign {click_command.name} options")
    for param in _options(click_command, skip):
        kwargs: dict[str, Any] = {"dest": f"imgsign_{param.name}", "default": None, "help": param.help}
        if param.is_flag:
            kwargs.update(action="store_const", const=True)
        else:
            kwargs.update(action="append" if param.multiple else "store",
                          metavar=param.metavar or f"<{param.opts[-1].lstrip('-')}>")
            if isinstance(param.type, click.Choice):
                kwargs["choices"] = list(param.type.choices)
            if param.required:
                kwargs["required"] = True
        group.add_argument(*param.opts, **kwargs)
    return parser


def click_values(ctx: click.Context, click_command: click.Command, parsed_args: argparse.Namespace,
                 skip: Iterable[str] = (), arguments: Sequence[str] = ()) -> dict[str, Any]:
    """The values :func:`add_options` parsed, handed back to the click command's own parser (``arguments``: its
    positional arguments), so that defaults, types, ranges and checks are exactly ``imgsign``'s. A bad value is
    OSC's CommandError, as for its own options."""
    from osc_lib import exceptions

    argv: list[str] = []
    wanted: list[str] = []
    for param in _options(click_command, skip):
        assert param.name is not None  # noqa: S101 - every option has a name
        wanted.append(param.name)
        value = getattr(parsed_args, f"imgsign_{param.name}", None)
        flag = max(param.opts, key=len)
        if value is None or value is False:
            continue
        if param.is_flag:
            argv.append(flag)
        else:
            argv += [f"{flag}={item}" for item in (value if param.multiple else [value])]
    try:
        sub = click_command.make_context(str(click_command.name), [*argv, "--", *arguments], parent=ctx)
    except click.ClickException as exc:
        raise exceptions.CommandError(exc.format_message()) from None
    return {name: sub.params[name] for name in wanted}


def _options(click_command: click.Command, skip: Iterable[str]) -> list[click.Option]:
    """The options of ``click_command`` an OSC command takes over."""
    skipped = _OSC_HAS | set(skip)
    return [p for p in click_command.params
            if isinstance(p, click.Option) and p.name not in skipped and not p.hidden]


def _clean(value: Any) -> Any:
    """Foreign text (names, subjects from Glance and certificates) shown without control characters."""
    from imgsign._internal.untrusted import safe

    if isinstance(value, str):
        return safe(value)
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class _ImgsignCommand(command.Command):
    """What the three commands share: the click context that imgsign's code keeps its state in, built on
    OSC's session and options, and the exit status."""

    log = logging.getLogger(__name__)
    _exit_code = 0

    def _context(self) -> click.Context:
        from imgsign.cli import cli

        options = self.app.options
        clients: Any = self.app.client_manager  # the plugins' clients are set on it at run time
        session = clients.imgsign  # make_client: OSC's authenticated session
        ctx = click.Context(cli, info_name="openstack", obj={
            "quiet": getattr(options, "verbose_level", 1) < 1, "debug": bool(getattr(options, "debug", False)),
            "config_file": getattr(options, "imgsign_config", None), "cloud_session": session,
        })
        return ctx

    def _fail(self, exc: errors.ImgsignError) -> None:
        """Report ``exc`` on stderr as imgsign does and end with its code."""
        from imgsign._internal.untrusted import safe

        if self.app.options.debug:
            from imgsign.cli._common import print_traceback

            print_traceback(exc)
        self.app.stderr.write(safe(f"imgsign: error: {exc.message}") + "\n")
        self._exit_code = exc.exit_code

    def run(self, parsed_args: argparse.Namespace) -> int:
        from imgsign._internal.openstack_auth import remember_secrets

        remember_secrets()  # clouds.yaml's and OS_*'s secrets: never in a message or --debug line of imgsign's
        if getattr(self.app.options, "debug", False):
            _filter_debug_logging()
        try:
            status = super().run(parsed_args)
        except errors.ImgsignError as exc:
            self._fail(exc)
            return self._exit_code
        return self._exit_code or int(status or 0)


def _filter_debug_logging() -> None:
    """Under OSC's ``--debug``: imgsign's filter on every handler (no request bodies, no remembered secrets)."""
    from imgsign._internal.debug_log import LogFilter

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, LogFilter) for f in handler.filters):
            handler.addFilter(LogFilter())


def _show(result: dict[str, Any]) -> tuple[Sequence[str], Sequence[Any]]:
    cleaned = _clean(result)
    return tuple(cleaned), tuple(cleaned.values())


class SignImage(_ImgsignCommand, command.ShowOne):
    """Sign an image file: show its img_signature* properties (imgsign sign)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        from imgsign.cli.sign import sign_command

        parser = super().get_parser(prog_name)
        parser.add_argument("file", metavar="<file>", help="Image file to sign")
        return add_options(parser, sign_command)

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Sequence[str], Sequence[Any]]:
        from imgsign.cli.sign import image_properties, sign_command

        ctx = self._context()
        with ctx:
            values = click_values(ctx, sign_command, parsed_args, arguments=[parsed_args.file])
            from imgsign.cli._signing import timestamp_settings

            stamp = timestamp_settings(ctx, values.pop("tsa_url"), values.pop("tsa_hash"), values.pop("tsa_ca_files"))
            if values.get("ocsp_issuer") is not None and values.get("cert_path") is None:
                raise click.UsageError("--ocsp-staple needs --cert (the certificate the responder is asked about)")
            return _show(image_properties(ctx, parsed_args.file, quiet=ctx.obj["quiet"], stamp=stamp, **values))


class VerifyImage(_ImgsignCommand, command.ShowOne):
    """Verify a Glance image's data against its img_signature* properties (imgsign verify --image)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        from imgsign.cli.verify import verify_command

        parser = super().get_parser(prog_name)
        parser.add_argument("image", metavar="<image>", help="Image to verify (name or ID)")
        return add_options(parser, verify_command, skip={"glance_image_id", "properties_path"})

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Sequence[str], Sequence[Any]]:
        from imgsign.cli.verify import verify_command, verify_result

        clients: Any = self.app.client_manager
        image_id = clients.image.find_image(parsed_args.image, ignore_missing=False).id
        ctx = self._context()
        with ctx:
            values = click_values(ctx, verify_command, parsed_args, skip={"glance_image_id", "properties_path"})
            policy = {k: values.pop(k) for k in ("allow_weak_keys", "ignore_cert_dates")}
            cert_path = values.pop("cert_path")
            tsa_ca_files = values.pop("tsa_ca_files")
            policy_path = values.pop("policy_path")
            facts = {k: values.pop(k) for k in ("owner", "visibility", "image_type", "booting_project")}
            result, error = verify_result(ctx, glance_image_id=image_id, cert_path=cert_path, trust=values,
                                          tsa_ca_files=tsa_ca_files, policy_path=policy_path, facts=facts, **policy)
        if error is not None:
            self._fail(error)
        return _show(result)


class AuditImages(_ImgsignCommand, command.Lister):
    """Audit every image the credentials can see: signed, by whom, valid, trusted, expiring (imgsign audit)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        from imgsign.cli.audit import audit_command

        # --compare reports two policies' verdicts side by side: `imgsign audit --compare` only.
        return add_options(super().get_parser(prog_name), audit_command, skip={"compare_path"})

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Sequence[str], Iterable[Sequence[Any]]]:
        from imgsign.cli.audit import ROW_COLUMNS, audit_command, audit_reports, image_rows

        ctx = self._context()
        with ctx:
            values = click_values(ctx, audit_command, parsed_args, skip={"compare_path"})
            trust = {k: values.pop(k) for k in ("trusted_ids", "trusted_files", "intermediate_files", "crl_files",
                                                "require_crl", "max_chain_depth")}
            reports, _policy = audit_reports(ctx, trust=trust, **values)
        failed = sum(not r.passed for r in reports)
        if failed:
            self._fail(errors.PolicyViolation(f"{failed} of {len(reports)} image(s) fail the audit"))
        titles = tuple(c.replace("_", " ").title().replace("Id", "ID") for c in ROW_COLUMNS)
        rows = [_clean([row[c] for c in ROW_COLUMNS]) for row in image_rows(reports)]
        return titles, rows
