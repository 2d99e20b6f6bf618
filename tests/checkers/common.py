"""Shared parts of the strict speech-server checkers (see README.md beside this file).

Each checker (`<profile>_checker.py`) is a WebSocket server that plays the part of a speech
server for one dialect and records every way the connecting client breaks that dialect's
public specification. This module holds what the four have in common: the command line, the
G.711 codec, per-track audio and WAV output, the HTTP-upgrade checks that every dialect can ask
for (token, reject, bounds), the per-connection session base class and the JSON report.

A dialect subclasses `Session` and feeds on `on_text`/`on_binary`, returning the text messages
to send back; `run()` owns the sockets, the clock and the report.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import hmac
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
import wave
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

# --- ITU-T G.711 ---------------------------------------------------------------------------
# Decoders follow the segment/quantisation description of ITU-T Rec. G.711 (11/88), tables 1
# (A-law) and 2 (µ-law), scaled to 16-bit linear PCM (µ-law: 14-bit value × 4, A-law: 13-bit
# value × 8), the usual convention of telephony software.


def _ulaw_decode(code: int) -> int:
    # Transmitted µ-law octets are the bitwise complement of the sign/segment/step code.
    u = ~code & 0xFF
    segment = (u >> 4) & 0x07
    step = u & 0x0F
    # Decision value midpoint: ((2·step + 33) << segment) − 33 in 14-bit units, times 4.
    magnitude = (((step << 3) + 0x84) << segment) - 0x84
    return -magnitude if u & 0x80 else magnitude


def _alaw_decode(code: int) -> int:
    # A-law inverts the even bits on the line (XOR 0x55); sign bit 1 means positive.
    a = code ^ 0x55
    segment = (a >> 4) & 0x07
    step = a & 0x0F
    magnitude = (step << 4) + 8
    if segment:
        magnitude = (magnitude + 0x100) << (segment - 1)
    return magnitude if a & 0x80 else -magnitude


ULAW_TABLE: tuple[int, ...] = tuple(_ulaw_decode(c) for c in range(256))
ALAW_TABLE: tuple[int, ...] = tuple(_alaw_decode(c) for c in range(256))


def ulaw_encode(sample: int) -> int:
    """16-bit linear → µ-law octet (G.711 table 2: bias 33 in 14-bit units, 8 segments)."""
    value = max(-32768, min(32767, sample)) >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, 8159) + 33
    segment = max(0, value.bit_length() - 6)
    if segment > 7:  # beyond the last segment: the largest magnitude
        return 0x7F ^ mask
    return (((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask) & 0xFF


def alaw_encode(sample: int) -> int:
    """16-bit linear → A-law octet (G.711 table 1: 13-bit magnitude, 8 segments)."""
    value = max(-32768, min(32767, sample)) >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask, value = 0x55, -value - 1
    if value > 0xFFF:
        return 0x7F ^ mask
    segment = max(0, value.bit_length() - 5)
    step = (value >> 1) & 0x0F if segment < 2 else (value >> segment) & 0x0F
    return ((segment << 4) | step) ^ mask


def decode(fmt: str, data: bytes) -> array.array:
    """Bytes of `fmt` (ulaw, alaw, l16 = little-endian 16-bit) → interleaved int16 samples."""
    if fmt == "ulaw":
        return array.array("h", [ULAW_TABLE[b] for b in data])
    if fmt == "alaw":
        return array.array("h", [ALAW_TABLE[b] for b in data])
    if fmt == "l16":
        out = array.array("h", data[: len(data) - len(data) % 2])
        if sys.byteorder == "big":
            out.byteswap()
        return out
    raise ValueError(f"unknown audio format {fmt!r}")


def encode_l16(samples) -> bytes:
    """int16 samples → little-endian 16-bit bytes (L16 as jambonz sends and takes it)."""
    out = array.array("h", samples)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


BYTES_PER_SAMPLE = {"ulaw": 1, "alaw": 1, "l16": 2}


def deinterleave(samples: array.array, channels: int) -> list[array.array]:
    return [samples[c::channels] for c in range(channels)]


def write_wav(path: Path, rate: int, samples: array.array) -> None:
    """One mono 16-bit PCM WAV."""
    data = array.array("h", samples)
    if sys.byteorder == "big":
        data.byteswap()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def read_wav(path: str | Path) -> tuple[int, int, array.array]:
    """(rate, channels, interleaved int16 samples) of a 16-bit PCM WAV."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit samples, need 16-bit PCM")
        rate, channels = w.getframerate(), w.getnchannels()
        data = array.array("h", w.readframes(w.getnframes()))
    if sys.byteorder == "big":
        data.byteswap()
    return rate, channels, data


# --- small helpers the dialects share --------------------------------------------------------

UUID_CHARS = set("0123456789abcdefABCDEF")


def is_uuid(value: Any) -> bool:
    """RFC 4122 textual form 8-4-4-4-12 hex digits."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    parts = value.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(set(p) <= UUID_CHARS for p in parts)


def json_object(text: str) -> tuple[dict | None, str | None]:
    """Parses a text frame that must hold one JSON object: (object, None) or (None, problem)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        return None, f"text frame is not JSON ({e})"
    if not isinstance(value, dict):
        return None, f"text frame is JSON {type(value).__name__}, not an object"
    return value, None


def dotted(obj: Any, path: str) -> tuple[bool, Any]:
    """(found, value) of `a.b.c` inside nested JSON objects."""
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return False, None
        obj = obj[key]
    return True, obj


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class Track:
    """Decoded audio of one channel of one connection, bounded by --max-audio-s."""

    def __init__(self, name: str, rate: int, max_samples: int):
        self.name = name
        self.rate = rate
        self.samples = array.array("h")
        self.max_samples = max_samples
        self.dropped = 0

    def add(self, samples: array.array) -> bool:
        """Appends; False once the bound is hit (the rest is counted, not kept)."""
        room = self.max_samples - len(self.samples)
        if room >= len(samples):
            self.samples.extend(samples)
            return True
        if room > 0:
            self.samples.extend(samples[:room])
        self.dropped += len(samples) - max(room, 0)
        return False

    @property
    def total(self) -> int:
        return len(self.samples) + self.dropped


class Session:
    """One upgrade attempt and, if accepted, its WebSocket connection. Dialects override the
    `check_upgrade`, `on_text`, `on_binary` and `on_close` hooks; none of them does I/O."""

    #: Upgrade request headers worth recording in the report (lower-case names).
    upgrade_headers: tuple[str, ...] = ("authorization",)

    def __init__(self, checker: "Checker", index: int):
        self.checker = checker
        self.args = checker.args
        self.index = index
        self.violations: list[str] = []
        self.messages: Counter[str] = Counter()
        self.tracks: dict[str, Track] = {}
        self.upgrade: dict[str, Any] = {}
        self.rejected: int | None = None
        self.accepted = False
        self.close: dict[str, Any] | None = None
        self.wavs: dict[str, str] = {}
        self.closed_by_server: str | None = None
        self._bound_reported = False
        # A voice bot's (--bot-wav): when it began talking, the marks it sent and their answers.
        self.bot_t0: float | None = None
        self.marks_sent: list[str] = []
        self.marks_echoed: list[dict[str, Any]] = []

    # -- hooks -----------------------------------------------------------------------------
    def check_upgrade(self, request: Request) -> tuple[int, str] | None:
        """Dialect checks of the HTTP upgrade; a (status, text) answer rejects it."""
        return None

    def select_subprotocol(self, offered: list[str]) -> str | None:
        return None

    def on_text(self, text: str) -> list[str]:
        raise NotImplementedError

    def on_binary(self, data: bytes) -> list[str]:
        raise NotImplementedError

    def on_close(self, by_server: bool) -> None:
        """End-of-connection rules (e.g. 'stop must be last'); `by_server` when we closed."""

    def extra_report(self) -> dict[str, Any]:
        return {}

    def want_close(self) -> tuple[int, str] | None:
        """A close the dialect asks the server to perform after the last reply."""
        return None

    async def talk(self, ws: ServerConnection) -> None:
        """What the server sends of its own accord while the connection is open (a voice bot's
        audio); runs beside the reading loop and is cancelled when the connection ends."""

    # -- voice bot helpers (dialects that talk back: --bot-wav, --bot-connections) ------------
    def bot_talks(self) -> bool:
        return self.args.bot_wav is not None and self.index <= self.args.bot_connections

    def bot_ms(self) -> float | None:
        """Milliseconds since the bot began talking."""
        return None if self.bot_t0 is None else round(1000.0 * (time.monotonic() - self.bot_t0), 1)

    def bot_samples(self) -> array.array | None:
        """--bot-wav's samples (8 kHz mono), or None with a violation."""
        rate, channels, samples = read_wav(self.args.bot_wav)
        if (rate, channels) != (8000, 1):
            self.violation(f"--bot-wav {self.args.bot_wav} is {rate} Hz x {channels}, must be 8000 Hz mono "
                           "(checker use)")
            return None
        return samples

    def bot_mark_back(self, name: Any, spec: str) -> None:
        """The client reported mark `name` played: it must be the next one this bot sent."""
        n = len(self.marks_echoed)
        want = self.marks_sent[n] if n < len(self.marks_sent) else None
        if want is None:
            self.violation(f"mark {name!r} that this server never sent ({spec})")
            return
        if name != want:
            self.violation(f"mark {name!r} answered where {want!r} was next (marks come back in the order "
                           f"sent, {spec})")
        self.marks_echoed.append({"name": name, "ms": self.bot_ms()})

    # -- helpers for dialects ---------------------------------------------------------------
    def violation(self, text: str) -> None:
        self.violations.append(f"conn {self.index}: {text}")

    def track(self, name: str, rate: int) -> Track:
        t = self.tracks.get(name)
        if t is None:
            t = self.tracks[name] = Track(name, rate, int(self.args.max_audio_s * rate))
        return t

    def add_audio(self, name: str, rate: int, samples: array.array) -> None:
        if not self.track(name, rate).add(samples) and not self._bound_reported:
            self._bound_reported = True
            self.violation(
                f"track {name} passed --max-audio-s {self.args.max_audio_s:g} "
                "(checker bound; the rest is counted but not kept)"
            )

    def audio_ms(self) -> float:
        return max((1000.0 * t.total / t.rate for t in self.tracks.values()), default=0.0)

    def typed_message(self, text: str, field: str, rule: str) -> tuple[dict, str] | None:
        """A text frame that must be a JSON object whose string `field` names its type: counts
        it under that name (or `invalid`), reports what is wrong citing `rule`."""
        msg, problem = json_object(text)
        kind = msg.get(field) if msg is not None else None
        if msg is None or not isinstance(kind, str):
            self.messages["invalid"] += 1
            self.violation(f'{problem or f"message without a string {field!r}: {text[:120]}"} ({rule})')
            return None
        self.messages[kind] += 1
        return msg, kind

    def check_expectations(self, obj: Any, what: str) -> None:
        """--expect PATH=VALUE against the dialect's metadata object."""
        for path, want in self.args.expect:
            found, got = dotted(obj, path)
            if not found:
                self.violation(f"{what} has no {path} (--expect {path}={want})")
            elif as_text(got) != want:
                self.violation(f"{what}.{path} is {as_text(got)!r}, expected {want!r} (--expect)")

    # -- report -----------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        out = {
            "index": self.index,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "upgrade": self.upgrade,
            "messages": dict(self.messages),
            "tracks": {n: {"samples": t.total, "rate": t.rate} for n, t in self.tracks.items()},
            "violations": self.violations,
            "close": self.close,
            "wavs": self.wavs,
        }
        out.update(self.extra_report())
        return out


# --- the HTTP upgrade checks every dialect may ask for --------------------------------------


def auth_problem(scheme: str, token: str, request: Request) -> str | None:
    """Checks the token the client must present (--expect-token/--auth-scheme)."""
    headers = request.headers
    if scheme in ("bearer", "token", "basic"):
        word = {"bearer": "Bearer", "token": "Token", "basic": "Basic"}[scheme]
        secret = base64.b64encode(token.encode()).decode() if scheme == "basic" else token
        want = f"{word} {secret}"
        got = headers.get("Authorization")
        if got is None:
            return f'upgrade has no Authorization header (expected "{word} …", --auth-scheme {scheme})'
        if not hmac.compare_digest(got.encode(), want.encode()):
            return (
                f'upgrade Authorization "{got}" is not "{word} <expected token>" '
                f"(--auth-scheme {scheme})"
            )
        return None
    kind, _, name = scheme.partition(":")
    if kind == "header" and name:
        got = headers.get(name)
        if got is None:
            return f"upgrade has no {name} header (--auth-scheme {scheme})"
        if not hmac.compare_digest(got.encode(), token.encode()):
            return f'upgrade header {name} is "{got}", not the expected token (--auth-scheme {scheme})'
        return None
    if kind == "query" and name:
        values = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query).get(name)
        if not values:
            return f"upgrade URL has no {name} query parameter (--auth-scheme {scheme})"
        if values != [token]:
            return f"upgrade query {name}={values} is not the expected token (--auth-scheme {scheme})"
        return None
    raise ValueError(f"unknown --auth-scheme {scheme!r}")


# --- command line ---------------------------------------------------------------------------


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value

    return parse


def auth_scheme(text: str) -> str:
    kind, sep, name = text.partition(":")
    if text in ("bearer", "token", "basic") or (sep and kind in ("header", "query") and name):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not bearer, token, basic, header:NAME or query:NAME"
    )


def base_parser(profile: str, description: str, default_auth: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{profile}_checker.py",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--listen", type=host_port, required=True, metavar="HOST:PORT",
                   help="address to listen on; port 0 picks one and prints 'listening <port>'")
    p.add_argument("--report", type=Path, metavar="PATH",
                   help="JSON report, rewritten on every connection close and on exit")
    p.add_argument("--wav-dir", type=Path, metavar="DIR",
                   help="write c<N>-<track>.wav (16-bit PCM, one per track) per connection N")
    p.add_argument("--expect-token", metavar="T",
                   help="the token the client must present, see --auth-scheme; else 401")
    p.add_argument("--auth-scheme", type=auth_scheme, default=default_auth,
                   help="where the token goes: bearer | token | basic (T = user:password) | "
                        "header:NAME | query:NAME")
    p.add_argument("--reject-upgrade", type=int, choices=(401, 403, 503), metavar="CODE",
                   help="answer the HTTP upgrade with CODE (401, 403 or 503)")
    p.add_argument("--reject-count", type=positive(int), metavar="N",
                   help="with --reject-upgrade: reject only the first N upgrades (default: all)")
    p.add_argument("--close-after-ms", type=positive(float), metavar="N",
                   help="close with 1001 once a connection has carried N ms of audio")
    p.add_argument("--close-count", type=positive(int), default=1, metavar="N",
                   help="with --close-after-ms: do it to the first N connections")
    p.add_argument("--expect", type=key_value, action="append", default=[], metavar="PATH=VALUE",
                   help="a field of the dialect's metadata (dotted path) must equal VALUE")
    p.add_argument("--max-message-bytes", type=positive(int), default=1 << 20, metavar="N",
                   help="largest WebSocket message accepted (bigger: close 1009 + violation)")
    p.add_argument("--max-connections", type=positive(int), default=64, metavar="N",
                   help="upgrades accepted over the checker's life (more: 503 + violation)")
    p.add_argument("--max-duration-s", type=positive(float), default=600.0, metavar="S",
                   help="the checker stops (and writes its report) after S seconds")
    p.add_argument("--max-audio-s", type=positive(float), default=600.0, metavar="S",
                   help="audio kept per track (more is counted, a violation, not kept)")
    p.add_argument("--exit-after", type=positive(int), metavar="N",
                   help="stop after N connections have closed (upgrades rejected count too)")
    return p


# --- the server ----------------------------------------------------------------------------


class Checker:
    """Sockets, clock, bounds and report around the dialect's `Session`s."""

    def __init__(self, profile: str, args: argparse.Namespace,
                 session_factory: Callable[["Checker", int], Session]):
        self.profile = profile
        self.args = args
        self.session_factory = session_factory
        self.sessions: list[Session] = []
        self.rejected = 0
        self.closes_done = 0
        self.finished = 0
        self.stopping: str | None = None
        self.stop_event: asyncio.Event | None = None

    # -- upgrade ----------------------------------------------------------------------------
    def process_request(self, connection: ServerConnection, request: Request):
        args = self.args
        session = self.session_factory(self, len(self.sessions) + 1)
        self.sessions.append(session)
        session.upgrade = self.upgrade_record(session, request)
        if self.stopping:
            return self.reject(session, connection, 503, "checker stopping\n")
        if args.reject_upgrade and (args.reject_count is None or self.rejected < args.reject_count):
            self.rejected += 1
            return self.reject(session, connection, args.reject_upgrade, "rejected (--reject-upgrade)\n")
        accepted = sum(1 for s in self.sessions if s.rejected is None) - 1
        if accepted >= args.max_connections:
            session.violation(f"more than --max-connections {args.max_connections} upgrades (checker bound)")
            return self.reject(session, connection, 503, "too many connections\n")
        if args.expect_token is not None:
            problem = auth_problem(args.auth_scheme, args.expect_token, request)
            if problem:
                session.violation(problem)
                return self.reject(session, connection, 401, "unauthorized\n")
        answer = session.check_upgrade(request)
        if answer:
            return self.reject(session, connection, answer[0], answer[1])
        connection.checker_session = session  # type: ignore[attr-defined]
        return None

    def reject(self, session: Session, connection: ServerConnection, status: int, text: str):
        session.rejected = status
        self.session_done()
        return connection.respond(HTTPStatus(status), text)

    @staticmethod
    def upgrade_record(session: Session, request: Request) -> dict[str, Any]:
        split = urllib.parse.urlsplit(request.path)
        headers = {}
        for name in session.upgrade_headers + ("sec-websocket-protocol", "host"):
            values = request.headers.get_all(name)
            if values:
                headers[name] = values[0] if len(values) == 1 else values
        return {
            "path": split.path,
            "query": {k: v if len(v) > 1 else v[0]
                      for k, v in urllib.parse.parse_qs(split.query, keep_blank_values=True).items()},
            "headers": headers,
        }

    def select_subprotocol(self, connection: ServerConnection, offered):
        session = getattr(connection, "checker_session", None)
        return session.select_subprotocol(list(offered)) if session else None

    # -- connection -------------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        session: Session = ws.checker_session  # type: ignore[attr-defined]
        session.accepted = True
        close_after = self.args.close_after_ms if self.closes_done < self.args.close_count else None
        if close_after is not None:
            self.closes_done += 1
        talking = asyncio.ensure_future(session.talk(ws))
        try:
            async for message in ws:
                if isinstance(message, str):
                    replies = session.on_text(message)
                else:
                    replies = session.on_binary(message)
                for reply in replies:
                    await ws.send(reply)
                wanted = session.want_close()
                if wanted is None and close_after is not None and session.audio_ms() >= close_after:
                    wanted = (1001, "checker --close-after-ms")
                if wanted:
                    session.closed_by_server = wanted[1]
                    await self.close_and_drain(ws, *wanted)
                    break
        except ConnectionClosed:
            pass
        finally:
            talking.cancel()
            if talking.done() and not talking.cancelled() and talking.exception():
                session.violation(f"checker bot failed: {talking.exception()!r}")
            self.finish(session, ws)

    @staticmethod
    async def close_and_drain(ws: ServerConnection, code: int, reason: str) -> None:
        """Closes while still reading: the client's close frame may sit behind messages it sent
        before it saw ours, and an unread queue stops websockets from reading at all."""
        closing = asyncio.ensure_future(ws.close(code, reason))
        try:
            async for _ in ws:
                pass  # sent before the client saw our close: not judged
        except ConnectionClosed:
            pass
        await closing

    def finish(self, session: Session, ws: ServerConnection) -> None:
        protocol = ws.protocol
        sent, rcvd = protocol.close_sent, protocol.close_rcvd
        if sent is not None and sent.code == 1009:
            session.violation(
                f"a message exceeded --max-message-bytes {self.args.max_message_bytes} (checker bound)"
            )
        if rcvd is not None and (sent is None or protocol.close_rcvd_then_sent):
            by = "client"
        elif sent is not None:
            by = "server"
        else:
            by = "abnormal"
        session.close = {"code": ws.close_code, "reason": ws.close_reason, "by": by}
        by_server = bool(session.closed_by_server or self.stopping or by == "server")
        session.on_close(by_server)
        if self.args.wav_dir:
            self.args.wav_dir.mkdir(parents=True, exist_ok=True)
            for name, t in session.tracks.items():
                path = self.args.wav_dir / f"c{session.index}-{name}.wav"
                write_wav(path, t.rate, t.samples)
                session.wavs[name] = str(path)
        self.session_done()

    def session_done(self) -> None:
        self.finished += 1
        self.write_report()
        if self.args.exit_after and self.finished >= self.args.exit_after and self.stop_event:
            self.stopping = self.stopping or "--exit-after"
            self.stop_event.set()

    # -- report -----------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        messages: Counter[str] = Counter()
        tracks: dict[str, dict[str, int]] = {}
        violations: list[str] = []
        for s in self.sessions:
            messages.update(s.messages)
            violations.extend(s.violations)
            for name, t in s.tracks.items():
                entry = tracks.setdefault(name, {"samples": 0, "rate": t.rate})
                entry["samples"] += t.total
                entry["rate"] = t.rate
        last = next((s for s in reversed(self.sessions) if s.accepted), None)
        return {
            "profile": self.profile,
            "ok": not violations,
            "violations": violations,
            "connections": sum(1 for s in self.sessions if s.accepted),
            "upgrades": len(self.sessions),
            "rejected_upgrades": sum(1 for s in self.sessions if s.rejected is not None),
            "messages": dict(messages),
            "tracks": tracks,
            "upgrade": last.upgrade if last else (self.sessions[-1].upgrade if self.sessions else {}),
            "wavs": [w for s in self.sessions for w in s.wavs.values()],
            "per_connection": [s.report() for s in self.sessions],
            "stopped_by": self.stopping,
        }

    def write_report(self) -> None:
        if not self.args.report:
            return
        tmp = self.args.report.with_name(self.args.report.name + ".tmp")
        tmp.write_text(json.dumps(self.report(), indent=2) + "\n")
        os.replace(tmp, self.args.report)

    # -- main loop --------------------------------------------------------------------------
    async def serve(self) -> int:
        self.stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(name: str) -> None:
            self.stopping = self.stopping or name
            self.stop_event.set()

        loop.add_signal_handler(signal.SIGTERM, on_signal, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, on_signal, "SIGINT")
        host, port = self.args.listen
        async with serve(
            self.handler,
            host,
            port,
            process_request=self.process_request,
            select_subprotocol=self.select_subprotocol,
            max_size=self.args.max_message_bytes,
            # Keep-alive pings would add traffic the dialects do not define; the peer's TCP
            # stack and --max-duration-s bound a dead connection instead.
            ping_interval=None,
        ) as server:
            bound = server.sockets[0].getsockname()[1]
            print(f"listening {bound}", flush=True)
            self.write_report()
            try:
                await asyncio.wait_for(self.stop_event.wait(), self.args.max_duration_s)
            except asyncio.TimeoutError:
                self.stopping = "--max-duration-s"
            self.stopping = self.stopping or "stop"
            server.close(close_connections=True)
            await server.wait_closed()
        self.write_report()
        return 0 if self.report()["ok"] else 1


def run(profile: str, args: argparse.Namespace,
        session_factory: Callable[[Checker, int], Session]) -> None:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr,
                        format=f"{profile}_checker: %(message)s")
    sys.exit(asyncio.run(Checker(profile, args, session_factory).serve()))


def now() -> float:
    """Wall clock for signature freshness (the checker is an I/O shell; tests inject time)."""
    return time.time()
