"""`dialsum worker`: the Docker socket check that runs before a Docker worker starts."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from support.as_user import NOBODY, call_as

from dialsum.cli import main as cli
from dialsum.errors import DialsumError
from dialsum.orchestration.worker import check_docker_socket, docker_socket


@pytest.fixture
def engine(tmp_path: Path):
    """A unix socket that answers Docker's `/_ping` like an engine; yields its path."""
    path = str(tmp_path / "docker.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()
    server.close()


def test_a_usable_socket_passes(engine: str) -> None:
    check_docker_socket(engine)


def test_a_socket_of_another_group_says_to_set_docker_gid(engine: str, tmp_path: Path) -> None:
    os.chmod(engine, 0o660)
    tmp_path.chmod(0o755)
    uid = NOBODY if os.getuid() == 0 else None
    if uid is None:
        pytest.skip("needs root to run the check as another user")
    status, exc = call_as(uid, lambda: check_docker_socket(engine))
    assert status == "error" and isinstance(exc, DialsumError), exc
    assert (
        "permission denied" in str(exc) and "DOCKER_GID" in str(exc) and "stat -c %g /var/run/docker.sock" in str(exc)
    )


def test_no_engine_is_an_error_naming_the_socket(tmp_path: Path) -> None:
    with pytest.raises(DialsumError, match=r"cannot reach the Docker engine at .*missing.sock.*DOCKER_GID"):
        check_docker_socket(str(tmp_path / "missing.sock"))


def test_socket_path_follows_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert docker_socket() == "/var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    assert docker_socket() == "/run/user/1000/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.2:2376")
    assert docker_socket() is None


def test_docker_worker_refuses_to_start_without_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/missing.sock")
    assert cli.main(["worker", "--pool", "dialsum-docker-cpu"]) == 2
    err = capsys.readouterr().err
    assert "DOCKER_GID" in err and "Traceback" not in err
