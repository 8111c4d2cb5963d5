"""An emulated Kubernetes API server for tests: kmock's ``KubernetesEmulator`` over HTTP, in
its own process.

``python -m tests.k8s_emulator`` serves Nodes (``v1/nodes``) and KubeRay RayClusters
(``ray.io/v1/rayclusters``, namespaced) on 127.0.0.1, prints ``URL <url>`` once it answers,
and serves until its standard input closes (the test process ended, however it ended) or it
is terminated. The emulator keeps objects in memory and answers list, watch, get, create,
patch and delete as an API server does; it ignores label selectors, so clients must filter
on their side too.

In tests::

    with EmulatedApiServer() as server:
        api = server.api_client()          # a real kubernetes.client.ApiClient
        CoreV1Api(api).create_node(...)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from types import TracebackType
from typing import IO, Any

START_TIMEOUT_S = 120.0  # generous: a loaded CI machine imports kmock and aiohttp slowly


class EmulatedApiServer:
    """The emulator in a child process (see the module docstring)."""

    def __init__(self) -> None:
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> EmulatedApiServer:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.k8s_emulator"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line: list[str] = []
        out: IO[str] = self._proc.stdout  # type: ignore[assignment]
        reader = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_S)
        if not line or not line[0].startswith("URL "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the emulated API server did not start: {line!r}")
        self.url = line[0].split(" ", 1)[1].strip().rstrip("/")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()

    def api_client(self) -> Any:
        from kubernetes import client as k8s_client

        cfg = k8s_client.Configuration()
        cfg.host = self.url
        return k8s_client.ApiClient(cfg)


async def _serve() -> None:
    import kmock

    async with kmock.KubernetesEmulator() as km, kmock.Server(km) as server:
        km.resources["v1/nodes"] = {}
        km.resources["ray.io/v1/rayclusters"] = {"namespaced": True, "kind": "RayCluster"}
        loop = asyncio.get_running_loop()
        closed = loop.run_in_executor(None, sys.stdin.read)  # returns at EOF
        print(f"URL {str(server.url).rstrip('/')}", flush=True)
        await closed


if __name__ == "__main__":
    asyncio.run(_serve())
