"""A BuildKit session with a Docker Engine, over its `/session` endpoint.

BuildKit asks the client for things during a build through a session: registry
credentials when it pulls a FROM image (without a session the engine answers "no active
sessions" for any image it does not hold), and the values of `RUN --mount=type=secret`.
The client dials `POST /session` with `Upgrade: h2c`; after `101` the engine speaks gRPC
(HTTP/2) over that connection *to us*, so we serve a few unary methods on it:

- /grpc.health.v1.Health/Check          the engine drops the session if this stops answering
- /moby.filesync.v1.Auth/Credentials    username/password for a registry host, from our config
- /moby.buildkit.secrets.v1.Secrets/GetSecret   only the ids this job named

Values travel only over this connection: never in the request URL, the log or argv.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from executors.engine.buildkit_progress import DecodeError, iter_fields
from executors.engine.client import EngineClient
from runner.core.errors import ExecutorError, InfrastructureError

HEALTH = "/grpc.health.v1.Health/Check"
CREDENTIALS = "/moby.filesync.v1.Auth/Credentials"
GET_SECRET = "/moby.buildkit.secrets.v1.Secrets/GetSecret"
NOT_FOUND, UNIMPLEMENTED, INTERNAL = 5, 12, 13


# -- protobuf encoding of the three tiny responses ------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_fields(*fields: tuple[int, int | bytes | str]) -> bytes:
    """Encode (number, value) pairs: ints as varints, str/bytes length-delimited."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            out += _varint(number << 3) + _varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += _varint(number << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def _string_field(message: bytes, wanted: int) -> str:
    for number, value in iter_fields(message):
        if number == wanted and isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return ""


class GrpcError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# -- the session ---------------------------------------------------------------------------------
class BuildSession:
    """Open with `start()`, pass `id` as the build's `session`, `close()` when the build ends."""

    def __init__(self, client: EngineClient, name: str, credentials: Callable[[str], tuple[str, str] | None],
                 secrets: dict[str, bytes] | None = None):
        self.client = client
        self.id = uuid.uuid4().hex
        self.name = name
        self.credentials = credentials
        self.secrets = dict(secrets or {})
        self.requests: list[str] = []  # methods the engine called (paths only), for tests
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._conn: h2.connection.H2Connection | None = None
        self._streams: dict[int, tuple[str, bytearray]] = {}
        self._pending: dict[int, bytearray] = {}

    def methods(self) -> list[str]:
        return [HEALTH, CREDENTIALS, *([GET_SECRET] if self.secrets else [])]

    def start(self) -> str:
        try:
            sock = self.client.dial()
        except OSError as exc:
            raise InfrastructureError(f"cannot open a BuildKit session with the Docker Engine: {exc}") from None
        try:
            leftover = self._upgrade(sock)
        except (OSError, InfrastructureError) as exc:
            sock.close()
            if isinstance(exc, InfrastructureError):
                raise
            raise InfrastructureError(f"cannot open a BuildKit session with the Docker Engine: {exc}") from None
        sock.settimeout(None)
        self._sock = sock
        self._conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self._conn.initiate_connection()
        self._thread = threading.Thread(target=self._serve, args=(leftover,), daemon=True, name=f"bk-session-{self.id[:8]}")
        self._thread.start()
        return self.id

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> BuildSession:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- HTTP/1.1 upgrade ----------------------------------------------------------------------
    def _upgrade(self, sock: socket.socket) -> bytes:
        path = self.client.session_path()
        lines = [f"POST {path} HTTP/1.1", "Host: docker", "Connection: Upgrade", "Upgrade: h2c", "Content-Length: 0",
                 f"X-Docker-Expose-Session-Uuid: {self.id}", f"X-Docker-Expose-Session-Name: {self.name}",
                 f"X-Docker-Expose-Session-Sharedkey: {self.name}",
                 *[f"X-Docker-Expose-Session-Grpc-Method: {m}" for m in self.methods()]]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise InfrastructureError("the Docker Engine closed the connection while opening a BuildKit session")
            data += chunk
            if len(data) > 65536:
                raise InfrastructureError("the Docker Engine sent an oversized answer to POST /session")
        head, _, leftover = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 101 " not in status + " ":
            raise InfrastructureError(f"the Docker Engine refused a BuildKit session: {status}")
        return leftover

    # -- HTTP/2 server -----------------------------------------------------------------------------
    def _serve(self, leftover: bytes) -> None:
        assert self._sock is not None and self._conn is not None
        try:
            self._send()
            data = leftover
            while not self._closed.is_set():
                if data:
                    self._handle(self._conn.receive_data(data))
                    self._send()
                data = self._sock.recv(65536)
                if not data:
                    return
        except (OSError, h2.exceptions.ProtocolError):
            return  # the engine went away or we closed; the build stream reports the outcome

    def _send(self) -> None:
        assert self._sock is not None and self._conn is not None
        out = self._conn.data_to_send()
        if out:
            self._sock.sendall(out)

    def _handle(self, events) -> None:
        assert self._conn is not None
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                path = next((str(value) for name, value in event.headers or () if name in (":path", b":path")), "")
                self._streams[event.stream_id] = (path, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                if event.stream_id in self._streams:
                    self._streams[event.stream_id][1].extend(event.data)
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self._streams:
                    path, body = self._streams.pop(event.stream_id)
                    self._respond(event.stream_id, path, bytes(body))
            elif isinstance(event, h2.events.StreamReset):
                self._streams.pop(event.stream_id, None)
                self._pending.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated):
                self._drain()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._closed.set()

    def _respond(self, stream_id: int, path: str, body: bytes) -> None:
        assert self._conn is not None
        self.requests.append(path)
        try:
            message = self._call(path, _unframe(body))
        except GrpcError as exc:
            self._conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc"),
                                                ("grpc-status", str(exc.code)), ("grpc-message", str(exc))], end_stream=True)
            return
        self._conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
        self._pending[stream_id] = bytearray(b"\x00" + len(message).to_bytes(4, "big") + message)
        self._drain()

    def _drain(self) -> None:
        """Send pending response bodies as far as flow control allows, then their trailers."""
        assert self._conn is not None
        for stream_id in list(self._pending):
            data = self._pending[stream_id]
            while data:
                room = min(self._conn.local_flow_control_window(stream_id), self._conn.max_outbound_frame_size)
                if room <= 0:
                    break
                self._conn.send_data(stream_id, bytes(data[:room]))
                del data[:room]
            if not data:
                self._conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
                del self._pending[stream_id]

    def _call(self, path: str, message: bytes) -> bytes:
        try:
            if path == HEALTH:
                return encode_fields((1, 1))  # HealthCheckResponse{status: SERVING}
            if path == CREDENTIALS:
                creds = self.credentials(_string_field(message, 1))
                return encode_fields((1, creds[0]), (2, creds[1])) if creds else b""
            if path == GET_SECRET and self.secrets:
                secret_id = _string_field(message, 1)
                if secret_id not in self.secrets:
                    raise GrpcError(NOT_FOUND, f"secret {secret_id} not found")
                return encode_fields((1, self.secrets[secret_id]))
        except DecodeError as exc:
            raise GrpcError(INTERNAL, f"bad request: {exc}") from None
        except ExecutorError as exc:  # e.g. a failing credential helper; the message names no secret
            raise GrpcError(INTERNAL, exc.message) from None
        raise GrpcError(UNIMPLEMENTED, f"{path} is not served by this runner")


def _unframe(body: bytes) -> bytes:
    """The message of a gRPC length-prefixed frame (uncompressed; unary calls carry one)."""
    if len(body) < 5:
        return b""
    if body[0] != 0:
        raise GrpcError(UNIMPLEMENTED, "compressed gRPC messages are not supported")
    return body[5:5 + int.from_bytes(body[1:5], "big")]
