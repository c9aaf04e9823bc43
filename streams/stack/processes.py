"""The embedded servers as processes: pid records, start, wait until answering, stop."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clickhouse_driver import Client

from streams.kafka.client import _kafka_admin, _quiet_client_logs
from streams.settings import EMBEDDED_HOST, KafkaAccess, Settings
from streams.stack.clickhouse_config import _write_if_changed
from streams.stack.embedded import BROKER_BUCKET, ServerInfo, StackError

_MARKER = ".cdrflow-state"


# Popen objects of the servers this process started, so that stopping them reaps them.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class _Launch:
    """How to start one embedded server and how to tell that it answers."""

    name: str
    command: Callable[[], list[str]]  # resolved at start: the binary may be missing
    env: Callable[[], dict[str, str]]
    address: str
    ports: dict[int, str]  # every port it listens on -> the variable that sets it
    log: Path
    answers: Callable[[], bool]
    error_log: Path | None = None  # where it explains a failed start, if not in `log`
    #: log files the server writes itself, made 0600 before it starts
    owner_only: tuple[Path, ...] = ()

    @property
    def port_variable(self) -> str:
        return next(iter(self.ports.values()))

    def failure_details(self, record: dict[str, Any] | None) -> str:
        """The end of its logs, from where this start began writing them."""
        offsets = (record or {}).get("log_offsets", {})
        lines = _log_lines(self.log, offsets.get(str(self.log), 0))[-12:]
        details = f"see its log {self.log}:\n" + "\n".join("    " + line for line in lines)
        if self.error_log is not None:
            errors = [
                line
                for line in _log_lines(self.error_log, offsets.get(str(self.error_log), 0))
                if "<Error>" in line
            ][-3:]
            if errors:
                details += f"\nlast errors in {self.error_log}:\n" + "\n".join(
                    "    " + line for line in errors
                )
        return details


def _clean_env() -> dict[str, str]:
    # The servers read some variables of their own (tansu: STORAGE_ENGINE, LISTENER_URL,
    # AWS_*); pass them only what we set.
    dropped = (
        "AWS_",
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "OTEL_",
    )
    return {key: value for key, value in os.environ.items() if not key.startswith(dropped)}


def _prepare_state_dir(state_dir: Path) -> None:
    """Make the state folder (0700: its data, logs and passwords are the owner's only)."""
    if state_dir.exists() and any(state_dir.iterdir()) and not (state_dir / _MARKER).exists():
        raise StackError(
            f"{state_dir} exists and is not a cdrflow state folder (no {_MARKER} file): "
            "choose another one with --state-dir or CDRFLOW_STATE_DIR"
        )
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Also a folder made by an earlier version, or by hand, with the umask's mode.
    state_dir.chmod(0o700)
    for folder in ("run", "logs", f"s3/{BROKER_BUCKET}"):
        (state_dir / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
    (state_dir / "logs").chmod(0o700)
    for log in (state_dir / "logs").iterdir():
        if log.is_file() and not log.is_symlink():
            log.chmod(0o600)
    (state_dir / _MARKER).touch()


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Hold the state folder's lock (one ``up`` or ``down`` at a time)."""
    with (state_dir / "run" / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pid_file(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.json"


def _read_record(state_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(_pid_file(state_dir, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _live_record(state_dir: Path, name: str) -> dict[str, Any] | None:
    """The pid file of ``name`` if its process is alive (and is the one that wrote it)."""
    record = _read_record(state_dir, name)
    if record is None or not _process_alive(record["pid"], record["start_ticks"]):
        return None
    return record


def _is_live(state_dir: Path, name: str) -> bool:
    return _live_record(state_dir, name) is not None


def _start_ticks(pid: int) -> tuple[str, int] | None:
    """Process state letter and start time (clock ticks after boot) from /proc, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _process_alive(pid: int, start_ticks: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    found = _start_ticks(pid)
    # A different start time means the pid was reused by another process.
    return found is not None and found[0] != "Z" and found[1] == start_ticks


def _start(state_dir: Path, launch: _Launch) -> ServerInfo:
    for port, variable in launch.ports.items():
        if _port_open(EMBEDDED_HOST, port):
            raise StackError(
                f"port {port} for {launch.name} is taken by another program (not started from "
                f"{state_dir}): stop it, or choose another port with {variable}"
            )
    argv = launch.command()
    launch.log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Logs are appended to across starts: a failure is explained from these offsets on.
    log_offsets = {
        str(path): path.stat().st_size if path.exists() else 0
        for path in (launch.log, launch.error_log)
        if path is not None
    }
    for path in launch.owner_only:
        # The server appends to a file made here (0600) rather than one of its umask's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600))
        path.chmod(0o600)
    descriptor = os.open(launch.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "ab") as log:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"--- cdrflow up {started}: {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=launch.env(),
            cwd=state_dir,
            start_new_session=True,  # setsid: the server outlives `cdrflow up`
        )
    _CHILDREN[process.pid] = process
    ticks = _start_ticks(process.pid)
    record = {
        "pid": process.pid,
        "start_ticks": ticks[1] if ticks else 0,
        "address": launch.address,
        "argv": argv,
        "log": str(launch.log),
        "log_offsets": log_offsets,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_if_changed(_pid_file(state_dir, launch.name), json.dumps(record, indent=2) + "\n")
    return ServerInfo(launch.name, launch.address, process.pid, launch.log, reused=False)


def _wait_until_answers(state_dir: Path, launch: _Launch, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        record = _read_record(state_dir, launch.name)
        if record is None or not _process_alive(record["pid"], record["start_ticks"]):
            raise StackError(
                f"{launch.name} stopped while starting; {launch.failure_details(record)}"
            )
        if launch.answers():
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"{launch.name} (pid {record['pid']}) did not answer on {launch.address} within "
                f"{timeout_s:.0f} s (`cdrflow down` stops it); {launch.failure_details(record)}"
            )
        time.sleep(0.2)


def _stop(state_dir: Path, name: str, timeout_s: float) -> bool:
    """Stop the server of a pid file: SIGTERM, then SIGKILL after ``timeout_s``."""
    record = _read_record(state_dir, name)
    if record is None:
        return False
    pid, ticks = record["pid"], record["start_ticks"]
    was_alive = _process_alive(pid, ticks)
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if not _process_alive(pid, ticks):
            break
        _signal_group(pid, sig)
        deadline = time.monotonic() + wait_s
        while _process_alive(pid, ticks) and time.monotonic() < deadline:
            time.sleep(0.05)
    if _process_alive(pid, ticks):
        raise StackError(f"{name} (pid {pid}) did not stop, even after SIGKILL")
    _pid_file(state_dir, name).unlink(missing_ok=True)
    _CHILDREN.pop(pid, None)
    return was_alive


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        # Each server leads its own session (setsid), so its group holds it and its children.
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _log_lines(path: Path, offset: int = 0, last_bytes: int = 64_000) -> list[str]:
    """The lines of a log written after ``offset`` (at most its last ``last_bytes``)."""
    try:
        with path.open("rb") as log:
            log.seek(max(log.seek(0, os.SEEK_END) - last_bytes, offset))
            return log.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # an S3 error document is an answer
    except OSError:
        return False


def _kafka_answers(kafka: KafkaAccess) -> bool:
    # A TCP check first: it is cheaper than a client's bootstrap when nothing listens.
    if not any(_port_open(*_host_port(server, 9092)) for server in kafka.servers):
        return False
    with _quiet_client_logs():
        try:
            admin = _kafka_admin(kafka, 3.0)
        except Exception:
            return False
        try:
            admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            admin.close()


def _clickhouse_answers(settings: Settings) -> bool:
    params = settings.clickhouse_params()
    # No TCP pre-check here: ClickHouse logs a warning for each connection without data.
    client = Client(**{**params, "database": ""}, connect_timeout=1, send_receive_timeout=3)
    with _quiet_client_logs():
        try:
            return client.execute("SELECT 1") == [(1,)]
        except Exception:
            return False
        finally:
            client.disconnect()


def _host_port(server: str, default_port: int) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return (host, int(port)) if host else (server, default_port)
