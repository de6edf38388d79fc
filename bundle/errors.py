"""Errors caused by the user's input, and the one-line report the command line prints for them.

Bad input (a corrupt image, a wrong option, an unwritable folder, a checkpoint of another task)
raises :class:`BundleInputError`, whose message names the file or option and what to do. Users run
the bundle through MONAI's own CLI (``python -m monai.bundle run ...``), whose entry point the bundle
does not own, and MONAI wraps every config error ("Failed to evaluate ConfigExpression",
"applying transform ..."). So importing :mod:`bundle` (every config does) installs
:func:`excepthook`: an uncaught exception with a ``BundleInputError`` anywhere in its chain
(``__cause__``/``__context__``, or in the text of a DataLoader worker's re-raised error) prints
``error: <message>`` as one line and exits with status 1. ``BUNDLE_DEBUG=1`` keeps the full traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from types import TracebackType

DEBUG_ENV = "BUNDLE_DEBUG"
PREFIX = "error: "
# torch re-raises a DataLoader worker's error as a new exception holding only the formatted
# traceback text, so the chain is lost; the bundle's error is recognised by its last line there.
_WORKER_LINE = re.compile(r"^bundle\.errors\.(?:BundleInput|MissingInput)Error: (.+)$", re.MULTILINE)


class BundleInputError(ValueError):
    """Bad input: the message names the file or option and what to do (one line when printed).

    A ``ValueError`` so that callers catching the readers' former ``ValueError`` keep working.
    """


class MissingInputError(BundleInputError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def find_input_error(exc: BaseException | None) -> BundleInputError | None:
    """The first :class:`BundleInputError` in ``exc``'s chain, following ``__cause__`` and ``__context__``.

    A DataLoader worker's error, re-raised by torch as text, is recognised from that text.

    Args:
        exc: the exception raised to the top.

    Returns:
        The bundle's error, or ``None`` when the failure is not the user's input.
    """
    seen: set[int] = set()
    todo = [exc]
    while todo:
        err = todo.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, BundleInputError):
            return err
        match = _WORKER_LINE.findall(str(err))
        if match:
            return BundleInputError(match[-1])
        todo += [err.__cause__, err.__context__]
    return None


def one_line(err: BaseException) -> str:
    """``error: <message>`` on a single line (inner newlines and runs of spaces collapsed)."""
    return PREFIX + " ".join(str(err).split())


def debug_enabled() -> bool:
    """Whether ``BUNDLE_DEBUG`` asks for full tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, fallback=sys.__excepthook__
) -> None:
    """Print bad input as one line and exit with status 1; hand anything else to ``fallback``."""
    err = None if debug_enabled() else find_input_error(exc)
    if err is None:
        fallback(exc_type, exc, tb)
        return
    logging.shutdown()  # flush log files before the report
    sys.stdout.flush()
    # a progress bar may have left its line open: start on a fresh one
    sys.stderr.write("\n" + one_line(err) + f" (set {DEBUG_ENV}=1 for the traceback)\n")
    sys.stderr.flush()
    # A reader or cache thread may still be inside native code (PIL, torch); the interpreter's
    # normal shutdown destroys native thread pools under it, which can abort the process
    # (SIGABRT, "terminate called without an active exception"). Everything is flushed: leave now.
    os._exit(1)


def shorten_record(record: logging.LogRecord) -> logging.LogRecord:
    """Make a log record about bad input one line: no traceback, the bundle's message.

    Engines log the exception that ends a run: Ignite's ``Engine run is terminating due to exception``
    (for a DataLoader worker's error, that text is the worker's whole traceback) and MONAI's
    ``StatsHandler`` (``logger.exception``, with the traceback).
    """
    if debug_enabled():
        return record
    err = find_input_error(record.exc_info[1]) if record.exc_info else None
    if err is None and isinstance(record.msg, str) and "Traceback" in record.msg:
        err = find_input_error(Exception(record.msg))
    if err is not None:
        first = record.getMessage().splitlines()[0]
        record.msg, record.args = f"{first} ({' '.join(str(err).split())})", ()
        record.exc_info, record.exc_text = None, None
    return record


def install_excepthook() -> None:
    """Wrap the current ``sys.excepthook`` (once) so that bad input is reported in one line.

    Log records about bad input are made one line too (:func:`shorten_record`).
    """
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_bundle_hook", False):
        # The loggers that report a run's end are created later, some with their own handlers
        # (MONAI's StatsHandler): the record factory is the one place that sees all their records.
        def make_record(*args, **kwargs) -> logging.LogRecord:
            record = factory(*args, **kwargs)
            if record.exc_info or (isinstance(record.msg, str) and "Traceback" in record.msg):
                shorten_record(record)
            return record

        make_record._bundle_hook = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(make_record)
    current = sys.excepthook
    if getattr(current, "_bundle_hook", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        excepthook(exc_type, exc, tb, fallback=current)

    hook._bundle_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
