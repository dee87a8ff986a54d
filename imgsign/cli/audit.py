"""``imgsign audit``: which images of a cloud are signed, by whom, valid, trusted, expiring soon?"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from imgsign import errors
from imgsign.audit import DEFAULT_EXPIRY_DAYS, MAX_EXPIRY_DAYS
from imgsign.cli._common import (
    is_quiet,
    load_trust_policy,
    open_store,
    policy_option,
    policy_options,
    quiet_option,
    trust_options,
    trust_setup,
)
from imgsign.cli._glance import cloud_options, glance_client
from imgsign.cli._output import emit, format_option

if TYPE_CHECKING:
    from imgsign._internal.glance_api import GlanceClient
    from imgsign.audit import Assessment, AuditPolicy, ImageReport

#: Default of ``--jobs``: concurrent downloads (each streams, one chunk in memory).
DEFAULT_JOBS = 2
MAX_JOBS = 32


@click.command("audit")
@cloud_options
@click.option("--project", "project_id", metavar="PROJECT_ID",
              help="Only the images this project owns (default: every image the credentials can see).")
@click.option("--expiry-days", type=click.IntRange(0, MAX_EXPIRY_DAYS), default=DEFAULT_EXPIRY_DAYS,
              show_default=True, help="Fail images whose certificates expire within this many days (0: never).")
@click.option("--download", is_flag=True, help="Also download each signed image and verify its data.")
@click.option("--jobs", type=click.IntRange(1, MAX_JOBS), default=DEFAULT_JOBS, show_default=True,
              help="Images downloaded at the same time with --download.")
@click.option("--allow-unsigned", is_flag=True, help="Unsigned images pass (they are still reported).")
@format_option()
@trust_options
@policy_option
@click.option("--compare", "compare_path", type=click.Path(dir_okay=False), metavar="OLD",
              help="With a trust policy (--policy NEW): also judge each image under the policy file OLD and report "
                   "what changes: images that pass under OLD and fail under NEW, and the other way round.")
@policy_options
@quiet_option
@click.pass_context
def audit_command(ctx: click.Context, os_cloud: str | None, os_region_name: str | None, project_id: str | None,
                  expiry_days: int, download: bool, jobs: int, allow_unsigned: bool, fmt: str | None,
                  trusted_ids: tuple[str, ...], trusted_files: tuple[str, ...], intermediate_files: tuple[str, ...],
                  crl_files: tuple[str, ...], require_crl: bool | None, max_chain_depth: int | None,
                  policy_path: str | None, compare_path: str | None,
                  allow_weak_keys: bool, ignore_cert_dates: bool, quiet: bool) -> None:
    """Audit every image the credentials can see: signed, by whom, valid, trusted, expiring soon.

    Under a trust policy (--policy or [imgsign] policy_file) each image is judged by the rule that applies to it.
    Exit 0 when every image passes, 75 when any fails (the report says why).
    """
    quiet = is_quiet(ctx, quiet)
    trust = {"trusted_ids": trusted_ids, "trusted_files": trusted_files, "intermediate_files": intermediate_files,
             "crl_files": crl_files, "require_crl": require_crl, "max_chain_depth": max_chain_depth}
    reports, policy, before = _audit(ctx, project_id=project_id, expiry_days=expiry_days, download=download,
                                     jobs=jobs, allow_unsigned=allow_unsigned, trust=trust,
                                     allow_weak_keys=allow_weak_keys, ignore_cert_dates=ignore_cert_dates,
                                     progress=not quiet, policy_path=policy_path, compare_path=compare_path)
    if fmt is not None:
        document = _document(reports, policy, download, project_id)
        if before is not None:
            document["compare"] = _comparison(reports, before, compare_path or "")
        emit(document, fmt, rows=image_rows(reports), columns=ROW_COLUMNS)
    elif not quiet:
        click.echo(_table(reports, policy, download))
        if before is not None:
            click.echo(_comparison_text(reports, before, compare_path or ""))
    failed = sum(not r.passed for r in reports)
    if failed:
        raise errors.PolicyViolation(f"{failed} of {len(reports)} image(s) fail the audit")


def audit_reports(ctx: click.Context, *, project_id: str | None = None, expiry_days: int = DEFAULT_EXPIRY_DAYS,
                  download: bool = False, jobs: int = DEFAULT_JOBS, allow_unsigned: bool = False,
                  trust: Mapping[str, Any] | None = None, allow_weak_keys: bool = False,
                  ignore_cert_dates: bool = False, progress: bool = False,
                  policy_path: str | None = None) -> tuple[list[ImageReport], AuditPolicy]:
    """Assess (and with ``download`` verify) every image the command's Glance client sees: a report per image,
    in the listing's order, and the policy they were judged by. ``trust`` holds
    :func:`~imgsign.cli._common.trust_anchors`' arguments by name; ``policy_path`` a trust policy file
    (else ``[imgsign] policy_file``, else the flat options)."""
    reports, policy, _before = _audit(ctx, project_id=project_id, expiry_days=expiry_days, download=download,
                                      jobs=jobs, allow_unsigned=allow_unsigned, trust=trust,
                                      allow_weak_keys=allow_weak_keys, ignore_cert_dates=ignore_cert_dates,
                                      progress=progress, policy_path=policy_path)
    return reports, policy


def _audit(ctx: click.Context, *, project_id: str | None, expiry_days: int, download: bool, jobs: int,
           allow_unsigned: bool, trust: Mapping[str, Any] | None, allow_weak_keys: bool, ignore_cert_dates: bool,
           progress: bool, policy_path: str | None,
           compare_path: str | None = None) -> tuple[list[ImageReport], AuditPolicy, list[ImageReport] | None]:
    """:func:`audit_reports`, and with ``compare_path`` each image's report under that (OLD) policy file."""
    import os

    from imgsign.audit import AuditPolicy, assess
    from imgsign.cli._common import TrustSetup
    from imgsign.policy import Policy

    trust = dict(trust or {})
    now = datetime.datetime.now(datetime.timezone.utc)
    setup = trust_setup(ctx, policy_path, tuple(trust.get("trusted_ids") or ()),
                        tuple(trust.get("trusted_files") or ()), tuple(trust.get("intermediate_files") or ()),
                        tuple(trust.get("crl_files") or ()), trust.get("require_crl"), trust.get("max_chain_depth"))
    if compare_path is not None and setup.builtin:
        raise click.UsageError("--compare OLD needs a trust policy to compare it with (--policy NEW or "
                               "[imgsign] policy_file)")
    from imgsign.cli._signing import tsa_roots
    from imgsign.cli.verify import ocsp_client

    checks = Policy(allow_weak_keys=allow_weak_keys, ignore_certificate_dates=ignore_cert_dates, at=now)
    # As `verify`: timestamps against the rule's tsa stores ([imgsign] tsa_ca_file for the built-in policy),
    # OCSP as [imgsign] ocsp says (the stapled response first).
    def ocsp_for(record: Mapping[str, object]) -> Any:
        return ocsp_client(ctx, record)

    if setup.builtin:
        policy = AuditPolicy(setup.legacy, checks, expiry_days, allow_unsigned, tsa_roots=tsa_roots(ctx, ()),
                             ocsp_for=ocsp_for)
    else:
        policy = AuditPolicy(None, checks, expiry_days, allow_unsigned, setup.policy, setup.anchors_for,
                             setup.base_anchors_for, tsa_roots_for=_tsa_roots_of(setup), ocsp_for=ocsp_for)
    old_policy = None
    if compare_path is not None:
        old = TrustSetup(ctx, load_trust_policy(compare_path), os.path.dirname(os.path.abspath(compare_path)))
        old_policy = AuditPolicy(None, checks, expiry_days, allow_unsigned, old.policy, old.anchors_for,
                                 old.base_anchors_for, tsa_roots_for=_tsa_roots_of(old), ocsp_for=ocsp_for)
    glance = glance_client(ctx)
    if project_id is not None:
        _check_project_is_an_id(ctx, project_id)
    records = list(glance.iter_images(project_id))
    lookup = _certificate_lookup(ctx)
    with _progress(len(records), "assessing", not progress) as step:
        assessments = [_step(assess(record, lookup, policy), step) for record in records]
    if download:
        with _progress(len(records), "downloading", not progress) as step:
            reports = _verify_all(glance, assessments, jobs, step)
    else:
        reports = [a.report for a in assessments]
    before = None
    if old_policy is not None:
        before = [_as_before(assess(record, lookup, old_policy).report, now_report)
                  for record, now_report in zip(records, reports, strict=True)]
    return reports, policy, before


def _tsa_roots_of(setup: Any) -> Callable[[Any], Any]:
    """The certificates of each rule's ``tsa`` stores, loaded once per rule."""
    loaded: dict[str, Any] = {}

    def roots(rule: Any) -> Any:
        if rule.name not in loaded:
            loaded[rule.name] = setup.tsa_roots_for(rule) if rule.tsa_stores else []
        return loaded[rule.name]

    return roots


#: The columns of :func:`image_rows` (``-f table``/``-f value``, and ``openstack image audit``).
ROW_COLUMNS = ("id", "name", "signer", "not_after", "chain", "data", "result", "reasons")


def image_rows(reports: Sequence[ImageReport]) -> list[dict[str, Any]]:
    """One flat row per image, as the text table shows it: signer (certificate's common name), its notAfter
    date, chain and data status, pass/FAIL, and the reasons it fails (space-separated)."""
    rows = []
    for r in reports:
        cert = r.certificate
        rows.append({
            "id": r.id, "name": r.name,
            "signer": ((cert.common_name or None) if cert is not None else None) if r.signed else "(unsigned)",
            "not_after": f"{cert.not_after:%Y-%m-%d}" if cert is not None and cert.not_after is not None else None,
            "chain": r.chain.status.value, "data": r.data.status.value, "result": "pass" if r.passed else "FAIL",
            "reasons": " ".join(dict.fromkeys(p.reason for p in r.failures)) or None,
        })
    return rows


def _as_before(old: ImageReport, new: ImageReport) -> ImageReport:
    """``old`` (judged without data) with the data check of ``new`` where the old rule verifies data too."""
    if new.data.problem is None or old.verdict == "skipped":
        return old
    return dataclasses.replace(old, failures=(*old.failures, new.data.problem), verdict="refused")


def _comparison(reports: Sequence[ImageReport], before: Sequence[ImageReport], old_source: str) -> dict[str, Any]:
    """What changes from the OLD policy to the one in force: the ``compare`` key of ``--json``."""
    pairs = list(zip(reports, before, strict=True))
    return {
        "policy": old_source,
        "newly_failing": [new.id for new, old in pairs if old.passed and not new.passed],
        "newly_passing": [new.id for new, old in pairs if new.passed and not old.passed],
        "images": [{"id": new.id, "old_rule": old.rule, "old_verdict": old.verdict, "old_passed": old.passed,
                    "rule": new.rule, "verdict": new.verdict, "passed": new.passed,
                    "old_failures": [p.as_dict() for p in old.failures]} for new, old in pairs],
    }


def _comparison_text(reports: Sequence[ImageReport], before: Sequence[ImageReport], old_source: str) -> str:
    pairs = list(zip(reports, before, strict=True))
    breaking = [(new, old) for new, old in pairs if old.passed and not new.passed]
    fixing = [(new, old) for new, old in pairs if new.passed and not old.passed]
    lines = [f"\nCompared with {_cell(old_source, 200)}: {len(breaking)} image(s) pass under it and fail now, "
             f"{len(fixing)} fail under it and pass now"]
    for new, old in breaking:
        why = "; ".join(p.reason for p in new.failures)
        lines.append(_cell(f"  now FAILS: {new.id} ({new.name or 'no name'}): rule {old.rule} -> {new.rule}: {why}",
                           400))
    for new, old in fixing:
        why = "; ".join(p.reason for p in old.failures)
        lines.append(_cell(f"  now passes: {new.id} ({new.name or 'no name'}): rule {old.rule} -> {new.rule} "
                           f"(failed with: {why})", 400))
    return "\n".join(lines)


def _certificate_lookup(ctx: click.Context) -> Callable[[str], bytes]:
    """The key manager's certificates by id, each fetched once (errors included)."""
    found: dict[str, bytes | errors.ImgsignError] = {}

    def lookup(cert_id: str) -> bytes:
        if cert_id not in found:
            try:
                found[cert_id] = open_store(ctx).get_certificate(cert_id)
            except errors.ImgsignError as exc:
                found[cert_id] = exc
        value = found[cert_id]
        if isinstance(value, errors.ImgsignError):
            raise value
        return value

    return lookup


def _verify_all(glance: GlanceClient, assessments: Sequence[Assessment], jobs: int,
                step: Callable[[int], None]) -> list[ImageReport]:
    """Download and verify the data of each image, ``jobs`` at a time; reports in the listing's order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    stop = threading.Event()

    def verify(assessment: Assessment) -> ImageReport:
        image_id = assessment.report.id
        if not assessment.can_verify_data or image_id is None:
            return assessment.skip_data()
        return assessment.verify_data(lambda: _until(stop, glance.iter_data(image_id)))

    executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="imgsign-audit")
    try:
        futures = [executor.submit(verify, a) for a in assessments]
        for future in as_completed(futures):
            future.result()  # a bug in one raises now
            step(1)
        reports = [future.result() for future in futures]
    except BaseException:
        stop.set()  # Ctrl-C or a bug: downloads under way end at their next chunk
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()
    return reports


def _until(stop: threading.Event, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` until ``stop`` is set; the download's response is closed either way."""
    try:
        for chunk in chunks:
            if stop.is_set():
                raise errors.GlanceUnavailable("the download was interrupted")
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _step(value: Any, step: Callable[[int], None]) -> Any:
    step(1)
    return value


@contextlib.contextmanager
def _progress(length: int, label: str, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar over ``length`` images on stderr, when it is a terminal and not quiet."""
    if quiet or not length or not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update


def _check_project_is_an_id(ctx: click.Context, project_id: str) -> None:
    """Glance's owner is a project id: the token's project *name* would match no image and pass silently."""
    from imgsign.cli._glance import keystone_scope

    scope = keystone_scope(ctx)
    if scope is not None and project_id == scope.project_name and project_id != scope.project_id:
        raise errors.InputError(f"--project {project_id} is the name of your token's project, project {project_id} "
                                f"({scope.project_id}); Glance records an image's owner by id: "
                                f"--project {scope.project_id}")


def _document(reports: Sequence[ImageReport], policy: AuditPolicy, download: bool,
              project_id: str | None) -> dict[str, Any]:
    """The ``-f json`` document (doc/source/specs/json-output.md lists its keys)."""
    from imgsign.audit import DataStatus
    from imgsign.certificates import describe

    anchors = policy.anchors
    return {
        "checked_at": policy.policy.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "project": project_id,
        "expiry_days": policy.expiry_days,
        "download": download,
        "trusted": None if anchors is None else [describe(c) for c in anchors.trusted],
        **({} if policy.trust is None else {"policy": policy.trust.source}),
        "summary": {
            "images": len(reports),
            "passed": sum(r.passed for r in reports),
            "failed": sum(not r.passed for r in reports),
            "unsigned": sum(not r.signed for r in reports),
            "expiring": sum(any(p.reason == "expires-soon" for p in r.failures) for r in reports),
            "data_invalid": sum(r.data.status is DataStatus.INVALID for r in reports),
        },
        "images": [r.as_dict() for r in reports],
    }


def _table(reports: Sequence[ImageReport], policy: AuditPolicy, download: bool) -> str:
    """One line per image, then why each failing image fails, then a summary."""
    by_policy = policy.trust is not None
    header = ["ID", "NAME", "SIGNER", "NOT AFTER", "CHAIN", "DATA", "RESULT"] + (["RULE", "VERDICT"] if by_policy
                                                                                   else [])
    rows = [header]
    for r in reports:
        cert = r.certificate
        not_after = (f"{cert.not_after:%Y-%m-%d}" + (" (soon)" if cert.expires_soon else "")
                     if cert is not None and cert.not_after is not None else "-")
        signer = ((cert.common_name or "?") if cert is not None else "?") if r.signed else "(unsigned)"
        rows.append([r.id or "-", r.name or "", signer, not_after, r.chain.status.value, r.data.status.value,
                     "pass" if r.passed else "FAIL"] + ([r.rule or "-", r.verdict or "-"] if by_policy else []))
    rows = [[_cell(c, 40) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    failing = [r for r in reports if not r.passed]
    if failing or any(r.warnings for r in reports):
        lines.append("")
    for r in reports:
        if r.passed and not r.warnings:
            continue
        lines.append(_cell(f"{r.id} ({r.name or 'no name'}):", 200))
        lines += [_cell(f"  {p.reason}: {p.message}", 400) for p in r.failures]
        lines += [_cell(f"  logged by rule {r.rule}: {p.reason}: {p.message}", 400) for p in r.warnings]
    trust = ("chains checked" if policy.anchors is not None else "chains not checked (no --trusted)") \
        if policy.trust is None else f"trust policy {policy.trust.source}"
    data = "data verified" if download else "data not downloaded (--download)"
    lines.append(f"\n{len(reports)} image(s): {len(reports) - len(failing)} pass, {len(failing)} fail; "
                 f"expiry window {policy.expiry_days} day(s); {trust}; {data}")
    return "\n".join(lines)


def _cell(text: str, width: int) -> str:
    """``text`` safe for a terminal (Glance's names are anyone's: no control characters) and at most ``width``."""
    from imgsign._internal.untrusted import safe

    clean = safe(text)
    return clean if len(clean) <= width else clean[:width - 1] + "…"
