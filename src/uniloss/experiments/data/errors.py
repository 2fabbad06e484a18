"""Exceptions raised by :mod:`uniloss.experiments.data`.

Every error says what was expected and what was found, so that a failed run explains itself:

* :class:`DataFormatError` (a :class:`ValueError`): a file is not in the format its publisher uses
  (bad IDX header, truncated gzip stream, a CIFAR batch without ``b'data'``...).
* :class:`ChecksumError` (a :class:`RuntimeError`): a file's digest differs from the registry's.
* :class:`DownloadError` (a :class:`RuntimeError`): every mirror failed for one file.
* :class:`DatasetNotFoundError` (a :class:`RuntimeError`): files are missing and could not be
  downloaded; the message names the files, the folders searched and where to put them.
"""
from __future__ import annotations

__all__ = ["DataFormatError", "ChecksumError", "DownloadError", "DatasetNotFoundError"]


class DataFormatError(ValueError):
    """A data file does not follow its publisher's on-disk format.

    Example::

        >>> from uniloss.experiments.data import read_idx
        >>> read_idx(b"\\x01\\x00\\x08\\x01")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        DataFormatError: not an IDX file: ...
    """


class ChecksumError(RuntimeError):
    """A file's digest differs from the one recorded in the dataset registry.

    Attributes:
        path: the file checked (or the temporary file of a download).
        expected: the registry's hex digest.
        actual: the digest computed, or ``None`` when the content could not be read at all
            (for instance a corrupt gzip stream).
    """

    def __init__(self, message: str, *, path=None, expected: str | None = None,
                 actual: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


class DownloadError(RuntimeError):
    """Every mirror (each tried twice) failed to deliver one file intact.

    Attributes:
        filename: the file that could not be fetched.
        attempts: ``(url, reason)`` pairs, one per try, in the order they were made.
    """

    def __init__(self, message: str, *, filename: str = "",
                 attempts: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.filename = filename
        self.attempts = list(attempts or [])


class DatasetNotFoundError(RuntimeError):
    """Files of a data set are missing locally and were not (or could not be) downloaded.

    The message names the missing files, every folder searched (in lookup order), the folder to
    put them in, and the URLs to fetch them from.

    Attributes:
        dataset: registry name, e.g. ``"mnist"``.
        missing: file names that were not found.
        searched: the dataset folders searched, in lookup order.
    """

    def __init__(self, message: str, *, dataset: str = "", missing=(), searched=()) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.missing = tuple(missing)
        self.searched = tuple(searched)
