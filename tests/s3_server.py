"""A real S3-compatible server for tests: moto in server mode, in its own process.

``MotoServer`` starts ``python -m moto.server -H 127.0.0.1 -p <free port>`` with this
interpreter, waits until it answers (a condition with a generous deadline, never a fixed
sleep), and stops it on exit. With ``iam=True`` it provisions two IAM users while anyone may
still call it, an ``admin`` allowed everything and a ``denied`` user with no S3 permission at
all, then switches IAM enforcement on for every later request (moto's
``/moto-api/reset-auth``, the runtime form of ``INITIAL_NO_AUTH_ACTION_COUNT``): from then on a
request needs a real key and moto answers 403 AccessDenied to the denied user.

Use it as a context manager::

    with MotoServer(iam=True) as s3:
        s3.client("s3").create_bucket(Bucket="data")
        fs_options = s3.storage_options()           # s3fs options as the admin
        denied = s3.storage_options(s3.denied)      # ... as the user without S3 rights

or as a fixture: ``s3 = moto_server_fixture("s3", scope="module", iam=True)`` in a test module
(or a conftest) defines a fixture named ``s3`` yielding a started :class:`MotoServer`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Literal

import pytest

Scope = Literal["session", "package", "module", "class", "function"]
REGION = "us-east-1"
START_TIMEOUT_S = 120.0  # generous: a loaded CI machine imports moto slowly


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


ANONYMOUS = Credentials("testing", "testing")  # any key works while IAM is not enforced


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """moto's server mode in a child process (see the module docstring)."""

    def __init__(self, *, iam: bool = False, start_timeout: float = START_TIMEOUT_S) -> None:
        self.iam = iam
        self.start_timeout = start_timeout
        self.url = ""
        self.admin = ANONYMOUS
        self.denied: Credentials | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> MotoServer:
        last_error = ""
        for _ in range(3):  # a free port can be taken between probing and binding it
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
            env = {**os.environ, "AWS_DEFAULT_REGION": REGION}
            env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # provisioning runs unauthenticated
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            if self._wait_ready():
                break
            last_error = self._output()
            self.stop()
        else:
            raise RuntimeError(f"moto server did not start:\n{last_error}")
        try:
            if self.iam:
                self._provision_iam()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)  # poll interval, not a wait for readiness
        return False

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-4000:]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- IAM ---------------------------------------------------------------------------------

    def _provision_iam(self) -> None:
        iam = self.client("iam", ANONYMOUS)
        allow_all = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.create_user(UserName="nuri-admin")
        iam.put_user_policy(
            UserName="nuri-admin", PolicyName="all", PolicyDocument=json.dumps(allow_all)
        )
        self.admin = _key(iam.create_access_key(UserName="nuri-admin"))
        iam.create_user(UserName="nuri-no-s3")  # no policy at all: every S3 call is denied
        self.denied = _key(iam.create_access_key(UserName="nuri-no-s3"))
        self.enforce_iam(True)

    def enforce_iam(self, on: bool) -> None:
        """Switch moto's IAM enforcement on (every request checked) or off."""
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth",
            data=b"0" if on else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200, r.read()

    # -- clients -----------------------------------------------------------------------------

    def client(self, service: str = "s3", creds: Credentials | None = None) -> Any:
        """A real boto3 client for this server (as the admin unless told otherwise)."""
        import boto3

        c = creds or self.admin
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=c.access_key_id,
            aws_secret_access_key=c.secret_access_key,
        )

    def storage_options(self, creds: Credentials | None = None) -> dict[str, Any]:
        """s3fs options for this server (as the admin unless told otherwise)."""
        c = creds or self.admin
        return {
            "key": c.access_key_id,
            "secret": c.secret_access_key,
            "client_kwargs": {"endpoint_url": self.url, "region_name": REGION},
        }

    def env(self, creds: Credentials | None = None) -> dict[str, str]:
        """Environment variables that point the standard AWS clients at this server."""
        c = creds or self.admin
        return {
            "NURI_S3_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": c.access_key_id,
            "AWS_SECRET_ACCESS_KEY": c.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
        }


def _key(response: dict[str, Any]) -> Credentials:
    key = response["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def moto_server(*, iam: bool = False) -> Iterator[MotoServer]:
    """Generator form (for ``yield from`` in a fixture)."""
    with MotoServer(iam=iam) as server:
        yield server


def moto_server_fixture(
    name: str = "s3", *, scope: Scope = "module", iam: bool = False
) -> Callable[..., Any]:
    """A pytest fixture named ``name`` that yields a started :class:`MotoServer`.

    Assign it at module level (``s3 = moto_server_fixture("s3", iam=True)``) or in a conftest.
    """

    def _fixture() -> Iterator[MotoServer]:
        yield from moto_server(iam=iam)

    fixture: Callable[..., Any] = pytest.fixture(scope=scope, name=name)(_fixture)
    return fixture


__all__ = [
    "REGION",
    "Credentials",
    "MotoServer",
    "free_port",
    "moto_server",
    "moto_server_fixture",
]
