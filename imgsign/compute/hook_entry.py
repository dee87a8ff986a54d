"""``imgsign-libvirt-hook``: the libvirt qemu hook's entry point.

The console script of that name, ``hooks/libvirt-qemu`` and the hook that ``imgsign boot
install-hook`` writes all call :func:`main`.  libvirt runs the hook for every operation on
every guest (``qemu <domain> <operation> <sub-operation> -``); only ``prepare begin`` and
``start begin`` check anything, so this module imports nothing but :mod:`sys` and answers
every other call with exit 0 (printing nothing: for ``migrate`` and ``restore`` stdout would
replace the domain XML) before :mod:`imgsign.compute.libvirt_hook` and its dependencies load.
"""

import sys

#: ``<operation> <sub-operation>`` pairs that check the domain (as ``libvirt_hook.CHECKED_OPERATIONS``).
CHECKED = (["prepare", "begin"], ["start", "begin"])


def main() -> int:
    """Run the hook on ``sys.argv`` and the domain XML on stdin; the exit status (0 allows the start)."""
    argv = sys.argv[1:]
    if argv[1:3] not in CHECKED:
        return 0
    import gc

    # No cycle collection while the modules load (they only add objects): about 6 % of a call's start-up.
    gc.disable()
    try:
        from imgsign.compute.libvirt_hook import main as check
    except Exception as exc:  # noqa: BLE001 - a broken install must refuse, not crash silently
        print(f"imgsign: refusing to start {argv[0]!a}: cannot load imgsign ({str(exc)!a})",
              file=sys.stderr)
        return 1
    gc.freeze()  # what was loaded stays; later collections (a first boot's adoption) skip it
    gc.enable()
    try:
        return check(argv, sys.stdin.buffer)
    except Exception as exc:  # noqa: BLE001 - never a traceback, and never a silent pass
        from imgsign._internal.redact import scrub
        from imgsign._internal.untrusted import safe

        print(safe(scrub(f"imgsign: refusing to start {argv[0]}: internal error {type(exc).__name__}: {exc}")),
              file=sys.stderr)
        return 1
