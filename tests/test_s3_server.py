"""The embedded S3 server's fixes keep localbucket's answers (streams/s3_server.py)."""

from __future__ import annotations

import http.client
import socket
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import localbucket
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stack import s3_server

KEYS = [
    "clusters/c1/topics/cdr.raw/partitions/0000000000/records/00000000000000000000.batch",
    "clusters/c1/topics/cdr.raw/partitions/0000000000/records/00000000000000000007.batch",
    "clusters/c1/topics/cdr.raw/partitions/0000000001/records/00000000000000000000.batch",
    "clusters/c1/topics/cdr.raw/partitions/0000000001/watermark.json",
    "clusters/c1/topics/cdr.rawx/partitions/0000000000/records/00000000000000000003.batch",
    "clusters/c1/topics/alerts/partitions/0000000002/records/00000000000000000001.batch",
    "clusters/c1/groups/consumers/cdrflow-worker.json",
    "clusters/c1/meta.json",
    "top.json",
]

PREFIXES = [
    "",
    "clusters/",
    "clusters/c1/topics/cdr.raw",
    "clusters/c1/topics/cdr.raw/",
    "clusters/c1/topics/cdr.raw/partitions/0000000000/records/",
    "clusters/c1/topics/cdr.raw/partitions/0000000001/",
    "clusters/c1/topics/cdr.raw/partitions/0000000001/records/0000",
    "clusters/c1/topics/missing/",
    "clusters/c1/groups/consumers/",
    "clusters//c1/",
    "clusters/../",
    "to",
]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("s3") / "tansu"
    for key in KEYS:
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode())
    (root / "clusters" / f"{localbucket.TEMP_PREFIX}upload").write_bytes(b"half written")
    return root


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(PREFIXES),
    delimiter=st.sampled_from(["", "/"]),
    marker=st.sampled_from(["", *KEYS, "clusters/c1/topics/", "clusters/c1/topics/cdr.raw/"]),
    max_keys=st.integers(min_value=0, max_value=len(KEYS) + 1),
)
def test_listing_equals_localbucket(bucket: Path, prefix, delimiter, marker, max_keys) -> None:
    marker_is_prefix = bool(delimiter) and marker.endswith(delimiter)
    args = (bucket, prefix, delimiter, marker, marker_is_prefix, max_keys)
    expected = s3_server._original_list_entries(None, *args)
    assert s3_server._list_entries_under_prefix(None, *args) == expected


def test_listing_walks_only_the_prefix_folder(bucket: Path, monkeypatch) -> None:
    walked: list[Path] = []
    real_walk = s3_server.os.walk

    def walk(top, *a, **kw):
        walked.append(Path(top))
        return real_walk(top, *a, **kw)

    monkeypatch.setattr(s3_server.os, "walk", walk)
    prefix = "clusters/c1/topics/cdr.raw/partitions/0000000000/records/0000"
    contents, _, _, _ = s3_server._list_entries_under_prefix(None, bucket, prefix, "", "", False, 1000)
    assert [key for key, _ in contents] == KEYS[:2]
    assert walked == [bucket / "clusters/c1/topics/cdr.raw/partitions/0000000000/records"]


def _median_get_ms(port: int, key: str, count: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for _ in range(count):
        began = time.perf_counter()
        connection.request("GET", f"/tansu/{key}")
        response = connection.getresponse()
        assert response.status == 200
        assert response.read() == key.encode()
        times.append((time.perf_counter() - began) * 1000)
    connection.close()
    return statistics.median(times)


def test_server_answers_kept_alive_requests_without_nagle_delay(bucket: Path) -> None:
    """A response's body must not wait for the client's delayed ACK (~40 ms a request)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streams.stack.s3_server", "--host", "127.0.0.1", "--port", str(port), str(bucket.parent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "the S3 server did not listen within 10 s"
                time.sleep(0.05)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/tansu?list-type=2&prefix=clusters/c1/topics/cdr.raw/partitions/0000000001/")
        listing = ET.fromstring(connection.getresponse().read())
        names = [element.text for element in listing.iter() if element.tag.endswith("Key")]
        assert names == KEYS[2:4]
        # Requests on one kept-alive connection: ~45 ms each with Nagle (the delayed ACK),
        # ~1 ms without; the median is what a busy machine leaves alone.
        assert _median_get_ms(port, KEYS[0], 21) < 25
    finally:
        server.terminate()
        server.wait(timeout=10)
