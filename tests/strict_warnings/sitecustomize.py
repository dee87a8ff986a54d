"""Loaded by every Python process .ci/latest starts (it puts this folder on PYTHONPATH).

With ``IMGSIGN_WARNINGS_AS_ERRORS`` set, a deprecation warning that imgsign's own code triggers (the
warning names an ``imgsign`` module as its place) raises instead of printing, in commands and the hook
too; so the drift check shows a new deprecation as a failing test.  Warnings imgsign silences on purpose
(``imgsign._internal.known_warnings.quiet``) stay silent: those filters are added later and come first.
"""

import os
import warnings

if os.environ.get("IMGSIGN_WARNINGS_AS_ERRORS"):
    categories: list[type[Warning]] = [DeprecationWarning, PendingDeprecationWarning, FutureWarning]
    try:
        from cryptography.utils import CryptographyDeprecationWarning

        categories.append(CryptographyDeprecationWarning)
    except ImportError:
        pass
    for category in categories:
        warnings.filterwarnings("error", category=category, module=r"imgsign\b")
