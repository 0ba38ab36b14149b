"""One delivery request against hostile hosts on loopback (tests/support/hosts.py): a host that
answers a byte at a time is cut at the request's one deadline and its socket closed; at most a
few KiB of any answer are read; TLS is verified on the name while the connection goes to the
address that was checked; and the callback address rules, with the cases of an egress
proxy's own table (stripe/smokescreen's ip_policy and bypass tests) and the issue's."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runner.config.sections import CallbacksConfig
from runner.worker.notify import connection
from runner.worker.notify.addresses import AddressRule, kind, literal_address, rule_for
from runner.worker.notify.callbacks import check_callback_url
from runner.worker.notify.http import Answer, Outgoing, send
from tests.support.hosts import SlowHost

LOOPBACK = AddressRule((ipaddress.ip_network("127.0.0.0/8"),))


def in_thread(call: Outgoing, timeout: float, **kw) -> Answer:
    """`send` on a thread of its own, so a send that never returns fails the test instead of hanging it."""
    answers: list[Answer] = []
    thread = threading.Thread(target=lambda: answers.append(send(call, timeout, **kw)), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the request outlived its deadline by a minute"
    return answers[0]


@pytest.fixture
def slow_host():
    made = []

    def make(mode: str, **kw) -> SlowHost:
        host = SlowHost(mode, **kw).start()
        made.append(host)
        return host

    yield make
    for host in made:
        host.close()


# -- one deadline for the whole request ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["headers", "silent", "tls"])
def test_a_host_answering_a_byte_at_a_time_is_cut_at_the_deadline_and_its_socket_closed(slow_host, mode):
    """A read timeout restarts with each byte: a host sending one every 0.2 s held a thread for
    ever. The deadline covers the whole request, and the socket is closed at it."""
    host = slow_host(mode)
    url = host.url.replace("http://", "https://") if mode == "tls" else host.url
    answer = in_thread(Outgoing("POST", url, url, {"Content-Type": "application/json"}, b"{}"), 1.5)
    assert answer.status is None and answer.retry and answer.reason == "no answer within 1.5s", answer
    host.wait(lambda: host.connections and host.connections[0].closed is not None, what="the client to close")
    assert host.connections[0].closed_by_client


def test_an_answer_whose_body_trickles_is_taken_by_its_status(slow_host):
    host = slow_host("body")
    answer = in_thread(Outgoing("POST", host.url, host.url, body=b"{}"), 1.0)
    assert answer.ok and answer.status == 200
    host.wait(lambda: host.connections[0].closed is not None)
    assert host.connections[0].closed_by_client


def test_the_attempts_deadline_cuts_a_request_shorter_than_its_timeout(slow_host):
    import time

    host = slow_host("headers")
    answer = in_thread(Outgoing("GET", host.url, host.url), 30, deadline=time.monotonic() + 1.0)
    assert answer.reason.startswith("no answer within the attempt's time left"), answer


def test_at_most_a_few_kib_of_an_answer_are_read():
    """An 8 KiB JSON error is cut at 4 KiB: not parsed (the reason shows its raw start); a
    status listing asks for more and gets it whole."""
    message = "m" * 8000

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            raw = json.dumps({"message": message}).encode()
            self.send_response(500 if self.path == "/error" else 200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        cut = send(Outgoing("GET", f"{base}/error", "x"), 5)
        assert cut.status == 500 and cut.data is None and cut.reason.startswith('HTTP 500: {"message": "mmm')
        whole = send(Outgoing("GET", f"{base}/listing", "x", max_answer=64 * 1024), 5)
        assert whole.data == {"message": message}
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("flood, reason", [("headers", "answer headers over 16 KiB"), ("body", "HTTP 200")])
def test_a_flood_of_an_answer_is_not_read(slow_host, flood, reason):
    host = slow_host("flood", flood=flood)
    answer = in_thread(Outgoing("GET", host.url, host.url), 10)
    assert answer.reason == reason
    host.wait(lambda: host.connections[0].closed is not None)
    assert host.connections[0].closed_by_client and host.connections[0].sent < 100_000_000


# -- where a request connects --------------------------------------------------------------------------
@pytest.fixture
def receiver():
    got: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append((self.path, dict(self.headers)))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], got
    server.shutdown()
    server.server_close()


def test_a_name_on_loopback_is_refused_on_the_address_it_resolves_to(services, receiver):
    """registry.runner.test is 127.0.0.1 in /etc/hosts: a name passes submission, and the
    address it resolves to is what is refused, before any connection."""
    port, got = receiver
    name = services["RUNNER_DEV_REGISTRY_NAME"].partition(":")[0]
    url = f"http://{name}:{port}/hook"
    assert check_callback_url(url, CallbacksConfig()) is None, "a name is checked when connecting"
    answer = send(Outgoing("POST", url, url, body=b"{}"), 5, rule=AddressRule())
    assert answer.blocked and not answer.retry and "127.0.0.1 is loopback" in answer.reason, answer
    assert got == []
    allowed = send(Outgoing("POST", url, url, body=b"{}"), 5, rule=LOOPBACK)
    assert allowed.status == 204 and got[0][1]["Host"] == f"{name}:{port}"


def test_the_name_is_looked_up_once_and_the_checked_address_is_the_one_connected(receiver, monkeypatch):
    """No DNS rebinding: a second lookup (as a client that resolves again to connect would make)
    would answer 169.254.169.254 here."""
    port, got = receiver
    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))],
                    [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]])
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: next(answers))
    answer = send(Outgoing("POST", f"http://hooks.rebind.test:{port}/x", "x", body=b"{}"), 5, rule=LOOPBACK)
    assert answer.status == 204 and got[0][1]["Host"] == f"hooks.rebind.test:{port}"
    assert next(answers)[0][4][0] == "169.254.169.254", "the second answer was never asked for"


def make_certs(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate for `name` signed by it (openssl), as PEM files."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=runner test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "host.key", "-out", "host.csr", "-subj", f"/CN={name}")
    (folder / "ext").write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "host.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "host.pem",
        "-days", "1", "-extfile", "ext")
    return folder / "ca.pem", folder / "host.pem", folder / "host.key"


@pytest.mark.parametrize("cert_name, ok", [("localhost", True), ("other.runner.test", False)])
def test_tls_is_verified_on_the_name_while_the_connection_goes_to_the_checked_address(tmp_path, monkeypatch, cert_name,
                                                                                      ok):
    if not Path("/usr/bin/openssl").exists():
        pytest.skip("needs the openssl command to make a test CA")
    ca, cert, key = make_certs(tmp_path, cert_name)
    monkeypatch.setattr(connection, "_TLS", ssl.create_default_context(cafile=str(ca)))  # the test CA as the trust store
    seen_sni: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://localhost:{server.server_address[1]}/hook"
        answer = send(Outgoing("POST", url, url, body=b"{}"), 5, rule=LOOPBACK)
        if ok:
            assert answer.status == 201, answer
        else:
            assert answer.status is None and answer.reason.startswith("TLS certificate not accepted"), answer
        assert seen_sni == ["localhost"]
    finally:
        server.shutdown()
        server.server_close()


# -- the address rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize("address, refused", [
    # smokescreen's classification cases (ip_policy_test.go, ip_filter_bypass_test.go)
    ("10.0.0.5", "private"), ("127.0.0.1", "loopback"), ("10.1.0.1", "private"), ("1.1.1.1", None), ("8.8.8.8", None),
    ("100.64.0.1", "shared"), ("64:ff9b::1", "inside IPv6"), ("169.254.169.254", "link-local"), ("fc00::1", "unique-local"),
    ("64:ff9b::a00:1", "private (IPv4 10.0.0.1 inside IPv6)"), ("fd00::5", "unique-local"),
    # the issue's, and the rest of the ranges
    ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("::127.0.0.1", "loopback"), ("2002:7f00:1::1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fd00:ec2::254", "unique-local"),
    ("100.100.100.200", "shared"), ("192.0.0.192", "protocol assignments"), ("172.16.0.1", "private"),
    ("172.31.255.255", "private"), ("172.32.0.1", None), ("192.168.1.1", "private"), ("224.0.0.251", "multicast"),
    ("233.252.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("192.0.2.1", "private"), ("198.18.0.1", "private"),
    ("fec0::1", "site-local"), ("2001:db8::1", "private"), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None),
    ("64:ff9b::808:808", None), ("2002:808:808::1", None),
])
def test_which_addresses_a_callback_may_reach(address, refused):
    why = kind(ipaddress.ip_address(address))
    assert (why is None) if refused is None else (why is not None and refused in why), (address, why)


def test_allowed_networks_and_exact_allowed_hosts_let_chosen_addresses_through():
    ten = AddressRule((ipaddress.ip_network("10.0.0.0/24"),))
    assert ten.refusal(ipaddress.ip_address("10.0.0.5")) is None
    assert "private" in ten.refusal(ipaddress.ip_address("10.0.1.5"))
    assert ten.refusal(ipaddress.ip_address("::ffff:10.0.0.5")) is None, "an IPv4-mapped address is judged as IPv4"
    assert rule_for("hooks.internal", None, ["hooks.internal"], []) is None
    assert rule_for("hooks.internal", 8443, ["hooks.internal:8443"], []) is None
    assert rule_for("::1", 9464, ["[::1]:9464"], []) is None
    assert rule_for("hooks.internal", 8443, ["*.internal", "*"], []) is not None, "a wildcard filters names only"


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[::1]/hook", "http://0x7f000001/hook",
                                 "http://localhost:9464/metrics", "http://2130706433/", "http://0177.0.0.1/",
                                 "http://[::ffff:127.0.0.1]/", "http://10.0.0.1/", "http://[fd00:ec2::254]/",
                                 "http://LOCALHOST./", "http://api.localhost/", "http://127.1:9464/"])
def test_a_callback_written_as_a_refused_address_is_refused_at_submission(url):
    from runner.config.settings import Settings
    from runner.core.jobs import BuildRequest
    from runner.worker.admission import Rejected, check_sources

    why = check_callback_url(url, CallbacksConfig())
    assert why is not None and "may not be called back" in why and "allowed_networks" in why, (url, why)
    with pytest.raises(Rejected) as refused:
        check_sources(BuildRequest(tags=["127.0.0.1:5000/a:1"], callback_url=url), Settings())
    assert refused.value.field == "callback_url"
    assert check_callback_url(url, CallbacksConfig(allowed_networks=["0.0.0.0/0", "::/0"])) is None


def test_public_names_and_addresses_pass_submission():
    for url in ("https://hooks.example.com/runner", "http://93.184.215.14/x", "https://[2606:4700::1111]/"):
        assert check_callback_url(url, CallbacksConfig()) is None, url
    assert literal_address("hooks.example.com") is None
