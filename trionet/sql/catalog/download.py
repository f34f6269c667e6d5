"""Download the contiguous-U.S. catalogue from the USGS FDSN event web service as ComCat CSV."""

from __future__ import annotations

import contextlib
import csv
import datetime
import http.client
import io
import os
import pathlib
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from trionet.sql.catalog.schema import NAMES

__all__ = ["USGS_URL", "fetch_usgs"]

USGS_URL = "https://earthquake.usgs.gov/fdsnws/event/1/query"
"""The USGS FDSN event web service (ComCat)."""

_CONTIGUOUS_US = {"minlatitude": "24.6", "maxlatitude": "50", "minlongitude": "-125", "maxlongitude": "-65"}
_SERVICE_LIMIT = 20_000  # the most events the service returns for one query


class _TooMany(Exception):
    """The service refused a window: it matches more events than one query may return."""


_TIMEOUT = 120.0  # seconds to wait on the service for one response
_RETRY_DELAYS = (2.0, 10.0)  # seconds before the 2nd and 3rd attempts at a window
_FIRST_WINDOW = datetime.timedelta(days=365)
_SMALLEST_WINDOW = datetime.timedelta(seconds=1)
_USER_AGENT = "trionet-catalog/1 (python urllib)"


def _fdsn_time(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _get_window(url: str, params: dict[str, str]) -> tuple[list[str] | None, list[list[str]]]:
    """Fetch one window: its CSV header (None when it has no events) and its records.

    The whole window is read before anything is written, so a retry after a
    broken download cannot duplicate rows. A window holds at most
    ``_SERVICE_LIMIT`` events (a few MB).

    Raises:
        _TooMany: the service says the window has too many events.
        urllib.error.URLError, OSError, http.client.HTTPException: the request failed.
    """
    request = urllib.request.Request(
        f"{url}?{urllib.parse.urlencode(params)}", headers={"User-Agent": _USER_AGENT}
    )
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            body = exc.read(4096).decode("utf-8", "replace")
        if exc.code == 400 and "limit" in body.lower():
            raise _TooMany(body) from None
        message = f"{exc.reason}: {body.strip()[:300]}"
        raise urllib.error.HTTPError(exc.url, exc.code, message, exc.headers, None) from None
    with response:
        if response.status == 204:  # FDSN: no events match
            return None, []
        rows = [row for row in csv.reader(io.TextIOWrapper(response, encoding="utf-8", newline="")) if row]
    if not rows:
        return None, []
    return rows[0], rows[1:]


def _get_window_with_retries(url: str, params: dict[str, str]) -> tuple[list[str] | None, list[list[str]]]:
    for delay in (*_RETRY_DELAYS, None):
        try:
            return _get_window(url, params)
        except urllib.error.HTTPError as exc:
            if delay is None or not (exc.code == 429 or exc.code >= 500):
                raise
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError):
            if delay is None:
                raise
        time.sleep(delay)
    raise AssertionError("unreachable")


def fetch_usgs(
    dest: str | os.PathLike,
    *,
    start: datetime.date,
    end: datetime.date,
    min_magnitude: float = 3.0,
    url: str = USGS_URL,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Download the contiguous-U.S. events from ``start`` through ``end`` as one ComCat CSV file.

    Queries the USGS FDSN event service (``format=csv``,
    ``orderby=time-asc``, latitude 24.6 to 50, longitude -125 to -65) one
    time window at a time. The service refuses a query matching more than
    20,000 events, so a refused window is halved and asked again; windows
    grow back when they come back small. Windows are half-open at the
    millisecond (ComCat's time resolution), so no event is fetched twice.

    Args:
        dest: the CSV file to write: one header line, then the events in
            time order. Written to ``dest.part`` and renamed at the end, so
            ``dest`` is never half written.
        start: the first day (UTC).
        end: the last day (UTC), included.
        min_magnitude: the smallest magnitude fetched.
        url: the service's query URL (tests point it at a local server).
        progress: called after each window as ``progress(seconds_done,
            seconds_total)``: how much of the time range has been fetched.

    Returns:
        The number of events written.

    Raises:
        ValueError: ``end`` is before ``start``, or the service's answers
            do not fit together (different headers).
        urllib.error.URLError: the service cannot be reached, or answered
            with an error (an ``HTTPError``, carrying its message).

    Error handling:
        A window that fails with a network error, a timeout, HTTP 429 or a
        5xx is tried three times in all, with a pause between tries.
    """
    if end < start:
        raise ValueError(f"end ({end}) is before start ({start})")
    begin = datetime.datetime.combine(start, datetime.time())
    finish = datetime.datetime.combine(end + datetime.timedelta(days=1), datetime.time())
    total = int((finish - begin).total_seconds())
    dest = pathlib.Path(dest)
    part = dest.with_name(dest.name + ".part")
    header: list[str] | None = None
    count = 0
    try:
        with open(part, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            window = _FIRST_WINDOW
            cursor = begin
            while cursor < finish:
                stop = min(cursor + window, finish)
                params = {
                    "format": "csv",
                    "orderby": "time-asc",
                    "starttime": _fdsn_time(cursor),
                    "endtime": _fdsn_time(stop - datetime.timedelta(milliseconds=1)),
                    "minmagnitude": repr(float(min_magnitude)),
                    **_CONTIGUOUS_US,
                }
                try:
                    window_header, rows = _get_window_with_retries(url, params)
                except _TooMany:
                    window = (stop - cursor) / 2
                    if window < _SMALLEST_WINDOW:
                        raise ValueError(
                            f"more than {_SERVICE_LIMIT} events from {params['starttime']} to "
                            f"{params['endtime']}: the service cannot return them"
                        ) from None
                    window = datetime.timedelta(milliseconds=window // datetime.timedelta(milliseconds=1))
                    continue
                if window_header is not None:
                    if header is None:
                        header = window_header
                        writer.writerow(header)
                    elif window_header != header:
                        raise ValueError(
                            f"the service changed its CSV columns between windows: {header} then {window_header}"
                        )
                    writer.writerows(rows)
                    count += len(rows)
                if len(rows) < _SERVICE_LIMIT // 4 and window < _FIRST_WINDOW:
                    window = min(window * 2, _FIRST_WINDOW)
                cursor = stop
                if progress is not None:
                    progress(int((cursor - begin).total_seconds()), total)
            if header is None:  # no events at all: still a valid, empty catalogue
                writer.writerow(NAMES)
        os.replace(part, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    return count
