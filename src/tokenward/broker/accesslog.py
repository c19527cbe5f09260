"""Query strings out of uvicorn's access log.

A query can carry what a client considers secret (a signed URL, a search, an upstream's own
`api_key=` parameter), and the broker promises not to log it. uvicorn's access lines are
`%s - "%s %s HTTP/%s" %d` with the path (and its query) as the third argument; this filter
cuts the query off before any handler formats the line.
"""

from __future__ import annotations

import logging

__all__ = ["QueryStringFilter"]

ACCESS_LOGGER = "uvicorn.access"


class QueryStringFilter(logging.Filter):
    """Drops the `?query` of the path in uvicorn access records (the record is kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, mark, _ = args[2].partition("?")
            if mark:
                record.args = (*args[:2], path + "?…", *args[3:])
        return True

    def attach(self) -> None:
        logging.getLogger(ACCESS_LOGGER).addFilter(self)

    def detach(self) -> None:
        logging.getLogger(ACCESS_LOGGER).removeFilter(self)
