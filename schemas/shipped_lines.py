"""Switch lines as log shippers put them on Kafka: one line per message, raw or in JSON.

Vector, Fluent Bit and Filebeat read a switch's CSV like any log and send each line as
one message: the raw line (Vector's ``text`` codec) or a JSON object that holds it in a
field (``message`` for Vector and Filebeat, ``log`` for Fluent Bit's tail input) beside
fields of their own. :func:`message_lines` takes a batch of message values back to the
lines, and says for each message that holds no line why not; ``cdrflow route`` then
frames the lines as the rows of a file would be (``schemas.switch_formats``).

Pure: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson


@dataclass(frozen=True)
class ShippedLines:
    """The lines of a batch of messages, one per message, in order.

    Attributes
    ----------
    lines
        One line per message, without its line end; ``b""`` where a message holds none.
    problems
        Index of each message that holds no line -> why, in words (its row is then
        rejected ``malformed`` with that detail).
    """

    lines: list[bytes]
    problems: dict[int, str]


def field_path(json_field: str) -> tuple[str, ...]:
    """The keys of ``--json-field`` (dots go into nested objects).

    Examples
    --------
    >>> field_path("message"), field_path("log.original")
    (('message',), ('log', 'original'))
    """
    parts = tuple(json_field.split("."))
    if not all(parts):
        raise ValueError(f"--json-field must be a field name, or names joined by dots; got {json_field!r}")
    return parts


def message_lines(values: Sequence[bytes | None], json_field: str | None = None) -> ShippedLines:
    """The switch line of each message value: the value itself (``json_field`` None) or the
    string in that field of a JSON object.

    A line end (``\\n`` or ``\\r\\n``) at the end is dropped, as shippers may keep it.
    A message holds no line when it is empty (a tombstone), holds a line break inside
    (one line per message), or, with ``json_field``, is not a JSON object with a string
    there.

    Examples
    --------
    >>> shipped = message_lines([b'"u1","4001"\\n', b"two\\nlines", None])
    >>> shipped.lines, shipped.problems
    ([b'"u1","4001"', b'', b''], {1: 'the message holds 2 lines; one line per message is expected', 2: 'the message is empty'})
    >>> message_lines([b'{"message": "a,b", "host": "ast1"}', b'{"log": "x"}', b"a,b"], "message").problems
    {1: 'the message has no "message" field', 2: 'the message is not JSON (expected an object with the line in "message")'}
    """
    path = field_path(json_field) if json_field is not None else None
    lines: list[bytes] = []
    problems: dict[int, str] = {}
    for index, value in enumerate(values):
        line, problem = _line_of(value, path, json_field)
        if problem is None and line is not None:
            line = _without_line_end(line)
            breaks = line.count(b"\n")
            if breaks:
                problem = f"the message holds {breaks + 1} lines; one line per message is expected"
        if problem is not None:
            problems[index] = problem
            line = b""
        lines.append(line or b"")
    return ShippedLines(lines=lines, problems=problems)


def _line_of(value: bytes | None, path: tuple[str, ...] | None, json_field: str | None) -> tuple[bytes | None, str | None]:
    if not value:
        return None, "the message is empty"
    if path is None:
        return value, None
    try:
        found: object = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, f'the message is not JSON (expected an object with the line in "{json_field}")'
    for depth, key in enumerate(path):
        if not isinstance(found, dict) or key not in found:
            return None, f'the message has no "{".".join(path[: depth + 1])}" field'
        found = found[key]
    if not isinstance(found, str):
        return None, f'the message\'s "{json_field}" field is not a string'
    return found.encode("utf-8", errors="surrogatepass"), None


def _without_line_end(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line
