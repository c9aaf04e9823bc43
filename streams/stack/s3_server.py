"""The embedded stack's S3 server: localbucket, with two fixes the broker's log needs.

tansu keeps every record batch as one object of its ``s3://`` store and reads them back
one request at a time, so the S3 server's cost per request is the broker's cost per
batch (docs/infra.md). localbucket 1.2 as published has two costs that grow where the
pipeline lives:

- **Nagle's algorithm on its responses.** It writes a response's headers and its body in
  two ``send`` calls on a socket without ``TCP_NODELAY``: the body waits for the client's
  delayed ACK of the headers, ~40 ms on Linux. Measured here: a GET of a 3 kB object on a
  kept-alive connection took 44.6 ms, and 0.9 ms with ``TCP_NODELAY``
  (``disable_nagle_algorithm``, the standard library's own switch).
- **A listing walks the whole bucket.** ``_list_entries`` walks every folder of the bucket
  and sorts every key before it looks at the prefix, so a listing of one partition's
  objects costs as much as all the topics' objects together, and grows with the age of
  the system. Keys are paths (``_object_path``: a key's ``/`` parts are folders), so a key
  that starts with ``a/b/c`` lies under the folder ``a/b``: the walk starts there. Same
  keys, same order, same paging.

Run as ``python -m streams.stack.s3_server [localbucket's arguments]``; it logs nothing below
WARNING (localbucket logs every request at INFO).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import localbucket

_original_list_entries = localbucket.S3Handler._list_entries


def _list_entries_under_prefix(
    self: localbucket.S3Handler,
    bucket_dir: Path,
    prefix: str,
    delimiter: str,
    marker: str,
    marker_is_prefix: bool,
    max_keys: int,
) -> tuple[list[tuple[str, Path]], list[str], bool, str]:
    """localbucket 1.2's ``_list_entries``, walking only the prefix's folder.

    Line for line the original (keys, their order, the marker, paging and common
    prefixes), except that the walk starts at ``bucket_dir/<folder>`` for a prefix
    ``<folder>/<rest>``: localbucket makes each key the path below ``bucket_dir``
    (``_object_path``), so only keys under that folder can start with the prefix.
    tests/test_s3_server.py compares it with the original.
    """
    folder, _, _ = prefix.rpartition("/")
    if folder and any(part in ("", ".", "..") for part in folder.split("/")):
        return [], [], False, ""  # no key has such a part (_object_path refuses them)
    walk_root = bucket_dir.joinpath(*folder.split("/")) if folder else bucket_dir
    contents: list[tuple[str, Path]] = []
    common_prefixes: list[str] = []
    last_entry = ""
    truncated = False
    keys = []
    for directory, _, files in os.walk(walk_root):
        for name in files:
            if name.startswith(localbucket.TEMP_PREFIX):
                continue
            path = Path(directory, name)
            keys.append((path.relative_to(bucket_dir).as_posix(), path))
    keys.sort(key=lambda item: item[0].encode())
    for key, path in keys:
        if not key.startswith(prefix):
            continue
        if marker and (
            key.encode() <= marker.encode() or (marker_is_prefix and key.startswith(marker))
        ):
            continue
        common = ""
        if delimiter:
            index = key.find(delimiter, len(prefix))
            if index >= 0:
                common = key[: index + len(delimiter)]
        if common and common_prefixes and common_prefixes[-1] == common:
            continue
        if len(contents) + len(common_prefixes) >= max_keys:
            truncated = max_keys > 0
            break
        if common:
            common_prefixes.append(common)
            last_entry = "P:" + common
        else:
            contents.append((key, path))
            last_entry = "K:" + key
    return contents, common_prefixes, truncated, last_entry


def patch() -> None:
    """Apply both fixes to localbucket's handler (idempotent)."""
    handler = localbucket.S3Handler
    handler.disable_nagle_algorithm = True
    handler._list_entries = _list_entries_under_prefix


def main(argv: list[str] | None = None) -> None:
    logging.disable(logging.INFO)
    patch()
    sys.argv = ["localbucket", *(sys.argv[1:] if argv is None else argv)]
    localbucket.main()


if __name__ == "__main__":
    main()
