"""Tells Home Assistant where the server is: a Wyoming `describe` probe (start-up wait and the
add-on image's HEALTHCHECK) and the Supervisor discovery call (service `wyoming`) of the add-on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from wyoming.client import AsyncClient
from wyoming.info import Describe, Info

_LOGGER = logging.getLogger(__name__)

DEFAULT_PROBE_URI = "tcp://127.0.0.1:10400"
DEFAULT_SUPERVISOR_URL = "http://supervisor"
SERVICE = "wyoming"


class DiscoveryError(RuntimeError):
    """The Supervisor refused or could not take the announcement; the message says what to do."""


async def _describe(uri: str) -> Info:
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Describe().event())
        while True:
            event = await client.read_event()
            if event is None:
                raise ConnectionError(f"{uri} closed the connection before answering describe")
            if Info.is_type(event.type):
                return Info.from_event(event)


def describe(uri: str = DEFAULT_PROBE_URI, timeout_s: float = 5.0) -> Info:
    """The server's `info` answer to a Wyoming `describe`; raises OSError or TimeoutError."""
    return asyncio.run(asyncio.wait_for(_describe(uri), timeout_s))


def wake_models(info: Info) -> list[str]:
    return [model.name for program in info.wake for model in program.models]


def wait_until_serving(uri: str = DEFAULT_PROBE_URI, wait_s: float = 600.0, interval_s: float = 0.5) -> Info:
    """Probe until the server answers `describe` with at least one wake model, for up to `wait_s`.

    The server loads and warms every model before it listens, so this can take a while on a board.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = describe(uri, timeout_s=max(1.0, min(5.0, deadline - time.monotonic())))
            if wake_models(info):
                return info
            error: Exception = ValueError("the server lists no wake models")
        except (OSError, asyncio.TimeoutError, ValueError) as err:
            error = err
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no Wyoming wake server answered on {uri} within {wait_s:.0f} s ({error})")
        time.sleep(interval_s)


def announce(
    config_uri: str,
    base_url: str | None = None,
    token: str | None = None,
    attempts: int = 5,
    timeout_s: float = 10.0,
    backoff_s: float = 1.0,
) -> str:
    """POST {"service": "wyoming", "config": {"uri": ...}} to the Supervisor's /discovery; the entry's uuid.

    Connection errors and 5xx answers are retried (the Supervisor may be busy at boot); 4xx are not.
    """
    base_url = (base_url or os.environ.get("SUPERVISOR_URL") or DEFAULT_SUPERVISOR_URL).rstrip("/")
    token = token if token is not None else os.environ.get("SUPERVISOR_TOKEN", "")
    if not token:
        raise DiscoveryError("SUPERVISOR_TOKEN is not set: discovery works only inside a Home Assistant add-on; "
                             "standalone, use --zeroconf")
    body = json.dumps({"service": SERVICE, "config": {"uri": config_uri}}).encode()
    request = urllib.request.Request(
        f"{base_url}/discovery", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                answer = json.loads(response.read() or b"{}")
            if answer.get("result") != "ok":
                raise DiscoveryError(f"the Supervisor answered {answer.get('message') or answer}")
            return str((answer.get("data") or {}).get("uuid", ""))
        except urllib.error.HTTPError as err:
            if err.code < 500:
                hint = "is `discovery: [wyoming]` in config.yaml?" if err.code in (401, 403) else "see its log"
                raise DiscoveryError(f"the Supervisor refused the discovery message (HTTP {err.code}); {hint}") from err
            error: Exception = err
        except (urllib.error.URLError, OSError, ValueError) as err:
            error = err
        if attempt < attempts:
            _LOGGER.debug("Discovery attempt %d failed (%s); retrying", attempt, error)
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise DiscoveryError(f"cannot reach the Supervisor at {base_url} ({error}); is this running as an add-on?")


def _tcp_port(uri: str) -> int:
    port = urlparse(uri).port
    if port is None:
        raise ValueError(f"{uri!r} has no port")
    return port


def local_uri(environ=None) -> str:
    """Where the server on this machine listens: the server's own OWW_URI (the Docker image's
    healthcheck runs beside a server configured by environment) with a wildcard host made local,
    else the default port."""
    uri = (os.environ if environ is None else environ).get("OWW_URI", "").strip()
    parsed = urlparse(uri)
    if parsed.scheme == "unix":
        return uri
    try:
        port = parsed.port if parsed.scheme == "tcp" else None
    except ValueError:
        port = None
    if port is None:
        return DEFAULT_PROBE_URI
    host = parsed.hostname if parsed.hostname not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
    return f"tcp://{'[' + host + ']' if ':' in host else host}:{port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wyoming_oww_rk3588.discovery", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    probe = commands.add_parser("probe", help="exit 0 when the server answers describe with its wake models")
    probe.add_argument("--uri", default=local_uri(), help="default: $OWW_URI's port on this machine, else 10400")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds")
    send = commands.add_parser("announce", help="wait for the server, then tell the Supervisor where it is")
    send.add_argument("--uri", default=DEFAULT_PROBE_URI, help="where to probe the server from here")
    send.add_argument("--host", default=None, help="host name Home Assistant connects to (default: this hostname)")
    send.add_argument("--port", type=int, default=None, help="port Home Assistant connects to (default: --uri's)")
    send.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the server")
    send.add_argument("--supervisor-url", default=None, help=f"default $SUPERVISOR_URL or {DEFAULT_SUPERVISOR_URL}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "probe":
            info = describe(args.uri, args.timeout)
            if not wake_models(info):
                print(f"{args.uri} answered describe but lists no wake models", file=sys.stderr)
                return 1
            return 0
        info = wait_until_serving(args.uri, args.wait)
        config_uri = f"tcp://{args.host or socket.gethostname()}:{args.port or _tcp_port(args.uri)}"
        uuid = announce(config_uri, base_url=args.supervisor_url)
        _LOGGER.info("Announced %s to Home Assistant (%d wake models; discovery %s)",
                     config_uri, len(wake_models(info)), uuid or "ok")
        return 0
    except (OSError, asyncio.TimeoutError, ValueError, DiscoveryError) as err:
        # One line; the add-on keeps serving, the user can still add the integration by hand.
        print(f"{args.command} failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
