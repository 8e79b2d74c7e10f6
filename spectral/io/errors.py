"""Which failures are properties of a file, and which are the machine's.

A stage records "this file is not valid media" and reuses that verdict for as long as the
file's bytes do not change, so only errors that say so may be recorded: the libraries'
invalid-data errors, a container without a stream of that kind, a stream without frames.
Anything else (a decoder that cannot be imported, an I/O error, memory, a bug) says nothing
about the file: recording it would keep the event without that modality until its bytes
change. Those are retried and then fail the stage loudly.
"""

from __future__ import annotations

import sys

import av
import soundfile as sf

_SF_SYSTEM_ERROR = 2  # libsndfile's SF_ERR_SYSTEM: the OS failed (I/O), not the file's format


class InvalidMediaError(ValueError):
    """Raised by the readers when the content is at fault: no stream of the kind, no frames, no samples."""


def is_invalid_media(err: BaseException) -> bool:
    """True when `err` says the file itself is not valid media of its kind (safe to record and reuse)."""
    if isinstance(err, InvalidMediaError | av.error.InvalidDataError | av.error.PatchWelcomeError):
        return True
    if isinstance(err, sf.LibsndfileError):
        return err.code != _SF_SYSTEM_ERROR
    # decord has one error type for everything; only its FFmpeg invalid-data message is the file's own
    return type(err).__name__ == "DECORDError" and "Invalid data found" in str(err)


def is_invalid_table(err: BaseException) -> bool:
    """True when `err` says a CSV's content cannot be parsed (polars' parse errors, bad values).

    polars is not imported for this: a polars error exists only where polars is loaded, and the
    decode workers, which never read a table, are spared its import (0.17 s each)."""
    polars = sys.modules.get("polars")
    parse_errors = (ValueError, polars.exceptions.PolarsError) if polars else ValueError
    return isinstance(err, parse_errors) and not isinstance(err, OSError)

