"""The ``tipsomaly`` command's exit statuses, the same for every verb (README: Troubleshooting)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a verb's exit status means."""

    OK = 0  #: everything done
    ERROR = 1  #: an error the user can fix (one line, no traceback), usage mistakes included
    NO_INPUTS = 2  #: ``predict`` or ``fit`` found no input images
    SOME_FAILED = 3  #: some images could not be read or scored (their rows / the list say why)
    INTERRUPTED = 130  #: Ctrl-C (128 + SIGINT)
