"""BuildKit progress: a minimal protobuf decoder for moby/buildkit's control API
`StatusResponse` (vertexes, statuses, logs, warnings) and a printer that turns the stream
into lines like `docker buildx build --progress=plain`.

The engine sends each StatusResponse base64-encoded in `{"id": "moby.buildkit.trace",
"aux": "..."}`. Field numbers follow api/services/control/control.proto; unknown fields are
skipped, so newer engines decode too. No protobuf dependency: the wire format is small.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

CANCELED = "context canceled"
TAIL_LINES = 10
STATUS_EVERY = 5.0  # seconds between progress lines of one unfinished status (a long pull)


class DecodeError(ValueError):
    """The bytes are not a protobuf message of the expected shape."""


# -- protobuf wire format ----------------------------------------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def iter_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield (field number, value): ints for varint/fixed fields, bytes for length-delimited."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = int.from_bytes(data[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(data[pos:pos + 4], "little"), pos + 4
        else:
            raise DecodeError(f"unsupported wire type {wire} (field {number})")
        if pos > len(data):
            raise DecodeError(f"field {number} runs past the end of the message")
        yield number, value


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: int | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _timestamp(value: int | bytes) -> float:
    """google.protobuf.Timestamp as float seconds since the epoch."""
    seconds = nanos = 0
    for number, v in iter_fields(value if isinstance(value, bytes) else b""):
        if isinstance(v, bytes):
            continue
        if number == 1:
            seconds = _int64(v)
        elif number == 2:
            nanos = v
    return seconds + nanos / 1e9


# -- messages ----------------------------------------------------------------------------------
@dataclass
class Vertex:
    digest: str = ""
    inputs: list[str] = field(default_factory=list)
    name: str = ""
    cached: bool = False
    started: float | None = None
    completed: float | None = None
    error: str = ""


@dataclass
class VertexStatus:
    id: str = ""
    vertex: str = ""
    name: str = ""
    current: int = 0
    total: int = 0
    timestamp: float | None = None
    started: float | None = None
    completed: float | None = None


@dataclass
class VertexLog:
    vertex: str = ""
    timestamp: float | None = None
    stream: int = 0
    msg: bytes = b""


@dataclass
class VertexWarning:
    vertex: str = ""
    level: int = 0
    short: str = ""
    detail: list[str] = field(default_factory=list)
    url: str = ""


@dataclass
class StatusResponse:
    vertexes: list[Vertex] = field(default_factory=list)
    statuses: list[VertexStatus] = field(default_factory=list)
    logs: list[VertexLog] = field(default_factory=list)
    warnings: list[VertexWarning] = field(default_factory=list)


def _varint_value(value: int | bytes) -> int:
    return _int64(value) if isinstance(value, int) else 0


def _raw_bytes(value: int | bytes) -> bytes:
    return value if isinstance(value, bytes) else b""


#: field number -> (attribute, converter) per message, from control.proto; a list attribute
#: (a `repeated` field) is appended to.
_FIELDS: dict[type, dict[int, tuple[str, Callable]]] = {
    Vertex: {1: ("digest", _text), 2: ("inputs", _text), 3: ("name", _text), 4: ("cached", bool),
             5: ("started", _timestamp), 6: ("completed", _timestamp), 7: ("error", _text)},
    VertexStatus: {1: ("id", _text), 2: ("vertex", _text), 3: ("name", _text), 4: ("current", _varint_value),
                   5: ("total", _varint_value), 6: ("timestamp", _timestamp), 7: ("started", _timestamp),
                   8: ("completed", _timestamp)},
    VertexLog: {1: ("vertex", _text), 2: ("timestamp", _timestamp), 3: ("stream", _varint_value), 4: ("msg", _raw_bytes)},
    VertexWarning: {1: ("vertex", _text), 2: ("level", _varint_value), 3: ("short", _text), 4: ("detail", _text),
                    5: ("url", _text)},
}


def _message(cls: type, data: bytes):
    message = cls()
    fields = _FIELDS[cls]
    for number, value in iter_fields(data):
        if number not in fields:
            continue
        name, convert = fields[number]
        current = getattr(message, name)
        if isinstance(current, list):
            current.append(convert(value))
        else:
            setattr(message, name, convert(value))
    return message


def decode_status(data: bytes) -> StatusResponse:
    """Decode one serialized moby.buildkit.v1.StatusResponse."""
    response = StatusResponse()
    parsers: dict[int, tuple[list, type]] = {
        1: (response.vertexes, Vertex), 2: (response.statuses, VertexStatus),
        3: (response.logs, VertexLog), 4: (response.warnings, VertexWarning),
    }
    for number, value in iter_fields(data):
        if number in parsers and isinstance(value, bytes):
            target, cls = parsers[number]
            target.append(_message(cls, value))
    return response


def decode_trace(aux: str) -> StatusResponse:
    """Decode the `aux` of a `moby.buildkit.trace` line (base64 of a StatusResponse)."""
    try:
        raw = base64.b64decode(aux, validate=True)
    except ValueError as exc:
        raise DecodeError(f"trace is not base64: {exc}") from None
    return decode_status(raw)


# -- the printer ---------------------------------------------------------------------------------
@dataclass
class _Step:
    vertex: Vertex
    first_started: float | None = None
    index: int = 0
    done: bool = False
    finished_once: bool = False
    quiet: bool = True  # nothing printed for the step since its last final line
    partial: dict[int, bytes] = field(default_factory=dict)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    status_printed: dict[str, float] = field(default_factory=dict)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{n}{unit}" if unit == "B" else f"{size:.2f}{unit}"
        size /= 1000
    return str(n)


class ProgressPrinter:
    """Feed StatusResponses in arrival order; lines go to `emit` as they become final.

    Step numbers (`#5`) are given in the order steps start, so the log reads top-down.
    A step's output lines carry the seconds since the step started, as buildx prints them.
    """

    def __init__(self, emit: Callable[[str], None]):
        self.emit = emit
        self.steps: dict[str, _Step] = {}
        self.current: str | None = None
        self._next = 0
        self._pending: list[_Step] = []

    # -- public ----------------------------------------------------------------------------
    def feed(self, response: StatusResponse) -> None:
        # BuildKit sends whole vertex snapshots and may restart a vertex right after it
        # completed (resolve, then pull), so a completion is printed one message later,
        # unless that message restarts the vertex.
        updated = [self._merge(update) for update in response.vertexes]
        pending, self._pending = self._pending, []
        for step in pending:
            if step.vertex.completed is not None or step.vertex.error:
                self._finish(step)  # else: restarted by this message; its completion comes later
        for step in updated:
            if step.index == 0 and (step.vertex.started is not None or step.vertex.cached):
                self._show(step)
        for status in response.statuses:
            self._status(status)
        for entry in response.logs:
            self._log(entry)
        for warning in response.warnings:
            step = self._step_for(warning.vertex)
            self._switch(step)
            step.quiet = False
            self.emit(f"#{step.index} WARN: {warning.short}")
        for step in updated:
            if (step.vertex.completed is not None or step.vertex.error) and not step.done and step not in self._pending:
                self._pending.append(step)

    def failed_step(self) -> Vertex | None:
        """The first step that failed for a reason other than cancellation."""
        for step in sorted(self.steps.values(), key=lambda s: s.index or 1 << 30):
            if step.vertex.error and not step.vertex.error.endswith(CANCELED):
                return step.vertex
        return None

    def settle(self) -> None:
        """Print held completions now (before other output, e.g. the engine's own lines)."""
        pending, self._pending = self._pending, []
        for step in pending:
            self._finish(step)

    def close(self) -> None:
        """Print held completions and partial output lines; call when the stream ends."""
        self.settle()
        for step in self.steps.values():
            if step.index:
                self._flush(step)

    def failure_summary(self) -> list[str]:
        """The failing step and its last output lines, framed as buildx frames them."""
        failed = self.failed_step()
        if failed is None:
            return []
        step = self.steps[failed.digest]
        return ["------", f" > {failed.name}:", *step.tail, "------"]

    # -- internals ---------------------------------------------------------------------------
    def _merge(self, update: Vertex) -> _Step:
        step = self.steps.get(update.digest)
        if step is None:
            step = self.steps[update.digest] = _Step(vertex=update, first_started=update.started)
            return step
        v = step.vertex
        v.name = update.name or v.name
        v.inputs = update.inputs or v.inputs
        v.cached, v.error = update.cached, update.error
        if update.started is not None:  # a snapshot: a restart clears the completion
            v.started, v.completed = update.started, update.completed
            step.first_started = step.first_started if step.first_started is not None else update.started
            if update.completed is None:
                step.done = False
        elif update.completed is not None:
            v.completed = update.completed
        return step

    def _step_for(self, digest: str) -> _Step:
        step = self.steps.get(digest) or self._merge(Vertex(digest=digest, name=digest[:19]))
        if not step.index:
            self._show(step)
        return step

    def _show(self, step: _Step) -> None:
        self._next += 1
        step.index = self._next
        self._switch(step)

    def _switch(self, step: _Step) -> None:
        if self.current == step.vertex.digest:
            return
        self.current = step.vertex.digest
        self.emit("")
        self.emit(f"#{step.index} {step.vertex.name}")

    def _status(self, status: VertexStatus) -> None:
        step = self._step_for(status.vertex)
        now = status.timestamp or 0.0
        last = step.status_printed.get(status.id)
        if status.completed is None and last is not None and now - last < STATUS_EVERY:
            return
        if status.completed is None and last is None and not status.current:
            step.status_printed[status.id] = now  # nothing to say yet; wait for progress
            return
        step.status_printed[status.id] = now
        amount = ""
        if status.total:
            amount = f" {_bytes(status.current)} / {_bytes(status.total)}"
        elif status.current:
            amount = f" {_bytes(status.current)}"
        took = ""
        if status.started is not None:
            end = status.completed if status.completed is not None else now
            if end - status.started > 0.01:
                took = f" {end - status.started:.1f}s"
        self._switch(step)
        step.quiet = False
        self.emit(f"#{step.index} {status.id}{amount}{took}{' done' if status.completed is not None else ''}")

    def _log(self, entry: VertexLog) -> None:
        step = self._step_for(entry.vertex)
        data = step.partial.pop(entry.stream, b"") + entry.msg
        *lines, rest = data.split(b"\n")
        if rest:
            step.partial[entry.stream] = rest
        if lines:
            self._switch(step)
        for raw in lines:
            self._line(step, raw, entry.timestamp)

    def _line(self, step: _Step, raw: bytes, timestamp: float | None) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        since = (timestamp or 0.0) - (step.vertex.started or timestamp or 0.0)
        precision = 3 if since < 10 else 2 if since < 100 else 1
        line = f"#{step.index} {max(since, 0.0):.{precision}f} {text}"
        step.tail.append(line)
        step.quiet = False
        self.emit(line)

    def _flush(self, step: _Step) -> None:
        pending, step.partial = step.partial, {}
        for rest in pending.values():
            self._switch(step)
            self._line(step, rest, step.vertex.completed)

    def _finish(self, step: _Step) -> None:
        if step.done:
            return
        if not step.index:
            self._show(step)
        self._flush(step)
        step.done = True
        if step.finished_once and step.quiet and not step.vertex.error:
            return  # a silent restart (e.g. metadata resolved again): the earlier line stands
        step.finished_once, step.quiet = True, True
        v = step.vertex
        self._switch(step)
        if v.error:
            self.emit(f"#{step.index} CANCELED" if v.error.endswith(CANCELED) else f"#{step.index} ERROR: {v.error}")
        elif v.cached:
            self.emit(f"#{step.index} CACHED")
        elif v.completed is not None and step.first_started is not None:
            self.emit(f"#{step.index} DONE {max(v.completed - step.first_started, 0.0):.1f}s")
        else:
            self.emit(f"#{step.index} DONE")
