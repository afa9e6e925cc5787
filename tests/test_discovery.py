"""Supervisor discovery against a local stand-in of the Supervisor API, and the describe probe
against the real server: what the add-on's discovery service and HEALTHCHECK run."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from server_harness import ServerThread, free_port
from wyoming_oww_rk3588 import discovery

TOKEN = "test-supervisor-token"


class StandInSupervisor:
    """An HTTP server on 127.0.0.1 that records each request and answers like the Supervisor."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[dict] = []
        self.statuses = list(statuses or [])  # HTTP status per request, then 200s
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append({
                    "method": self.command, "path": self.path,
                    "auth": self.headers.get("Authorization"),
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(self.rfile.read(length) or b"null"),
                })
                status = outer.statuses.pop(0) if outer.statuses else 200
                ok = status == 200 and self.path == "/discovery" and self.headers.get("Authorization") == f"Bearer {TOKEN}"
                answer = {"result": "ok", "data": {"uuid": "abc123"}} if ok else {"result": "error", "message": "no"}
                payload = json.dumps(answer).encode()
                self.send_response(status if status != 200 or ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "StandInSupervisor":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_announce_posts_the_wyoming_service_with_bearer_token_and_uri():
    with StandInSupervisor() as supervisor:
        uuid = discovery.announce("tcp://abcd1234-openwakeword-rk3588:10400", base_url=supervisor.url, token=TOKEN)
    assert uuid == "abc123"
    assert supervisor.requests == [{
        "method": "POST", "path": "/discovery", "auth": f"Bearer {TOKEN}", "content_type": "application/json",
        "body": {"service": "wyoming", "config": {"uri": "tcp://abcd1234-openwakeword-rk3588:10400"}},
    }]


def test_announce_retries_while_the_supervisor_answers_5xx():
    with StandInSupervisor(statuses=[503, 502]) as supervisor:
        uuid = discovery.announce("tcp://h:10400", base_url=supervisor.url, token=TOKEN, backoff_s=0.01)
    assert uuid == "abc123"
    assert len(supervisor.requests) == 3


def test_announce_refused_names_the_missing_discovery_key():
    with StandInSupervisor() as supervisor:
        with pytest.raises(discovery.DiscoveryError, match=r"HTTP 401.*discovery: \[wyoming\]"):
            discovery.announce("tcp://h:10400", base_url=supervisor.url, token="wrong-token", backoff_s=0.01)
    assert len(supervisor.requests) == 1  # a 4xx is not retried


def test_announce_without_token_says_it_needs_the_add_on(monkeypatch):
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)
    with pytest.raises(discovery.DiscoveryError, match="SUPERVISOR_TOKEN.*--zeroconf"):
        discovery.announce("tcp://h:10400", base_url="http://127.0.0.1:9")


def test_announce_gives_up_on_an_unreachable_supervisor():
    with pytest.raises(discovery.DiscoveryError, match="cannot reach the Supervisor"):
        discovery.announce("tcp://h:10400", base_url=f"http://127.0.0.1:{free_port()}", token=TOKEN,
                           attempts=2, backoff_s=0.01, timeout_s=1)


def test_probe_and_announce_against_the_real_server(monkeypatch):
    monkeypatch.setenv("SUPERVISOR_TOKEN", TOKEN)
    with ServerThread() as server, StandInSupervisor() as supervisor:
        uri = f"tcp://127.0.0.1:{server.port}"
        assert discovery.main(["probe", "--uri", uri]) == 0
        assert "okay_nabu" in discovery.wake_models(discovery.describe(uri))
        code = discovery.main(["announce", "--uri", uri, "--host", "addon-host", "--port", "10400",
                               "--wait", "20", "--supervisor-url", supervisor.url])
    assert code == 0
    assert supervisor.requests[0]["body"] == {"service": "wyoming", "config": {"uri": "tcp://addon-host:10400"}}


def test_announce_uses_this_hostname_and_the_probe_port_by_default(monkeypatch):
    monkeypatch.setenv("SUPERVISOR_TOKEN", TOKEN)
    monkeypatch.setattr(discovery.socket, "gethostname", lambda: "abcd1234-openwakeword-rk3588")
    with ServerThread() as server, StandInSupervisor() as supervisor:
        monkeypatch.setenv("SUPERVISOR_URL", supervisor.url)
        assert discovery.main(["announce", "--uri", f"tcp://127.0.0.1:{server.port}", "--wait", "20"]) == 0
    assert supervisor.requests[0]["body"]["config"]["uri"] == f"tcp://abcd1234-openwakeword-rk3588:{server.port}"


def test_probe_fails_fast_with_one_line_when_nothing_listens(capsys):
    assert discovery.main(["probe", "--uri", f"tcp://127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe failed:") and "\n" not in err


def test_announce_waits_for_the_server_then_gives_up_without_posting(monkeypatch):
    monkeypatch.setenv("SUPERVISOR_TOKEN", TOKEN)
    with StandInSupervisor() as supervisor:
        code = discovery.main(["announce", "--uri", f"tcp://127.0.0.1:{free_port()}", "--wait", "1",
                               "--supervisor-url", supervisor.url])
    assert code == 1
    assert supervisor.requests == []
