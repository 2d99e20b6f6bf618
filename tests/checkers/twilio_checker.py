#!/usr/bin/env python3
"""Strict checker for the Twilio Media Streams dialect (messages Twilio sends to your server).

Spec: https://www.twilio.com/docs/voice/media-streams/websocket-messages
(connected, start, media, dtmf, mark, stop) and, for X-Twilio-Signature,
https://www.twilio.com/docs/usage/security#validating-requests. Tracks: inbound, outbound.

With --bot-wav it is also a bidirectional server (a voice bot): once "start" arrived it sends
the WAV as "media" messages (base64 µ-law 8 kHz, --bot-chunk-ms each, all at once: faster
than real time, as TTS does), each followed by a "mark" m1, m2, ...; optionally a "clear"
(--bot-clear-after-ms) or a close (--bot-close-after-ms) later. Twilio echoes each mark once
the audio before it has been played (and every pending one at a "clear"): an echo of a mark
never sent, or out of order, is a violation; the report lists each echo with its time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from typing import Any

from websockets.http11 import Request

import common

SPEC = "Twilio Media Streams"
TRACKS = ("inbound", "outbound")
SID_PATTERNS = {"accountSid": "AC", "callSid": "CA", "streamSid": "MZ"}
DTMF_DIGITS = set("0123456789*#")


def ref(event: str) -> str:
    return f'{SPEC} "{event}" message'


class TwilioSession(common.Session):
    upgrade_headers = ("authorization", "x-twilio-signature")

    def __init__(self, checker: common.Checker, index: int):
        super().__init__(checker, index)
        self.first = True
        self.connected = False
        self.start: dict[str, Any] | None = None
        self.stopped = False
        self.next_seq = 1
        self.stream_sid: str | None = None
        self.tracks_announced: list[str] = []
        self.chunks: dict[str, int] = {}
        self.timestamps: dict[str, int] = {}
        # Bot (return audio): set once "start" arrived; what was sent and echoed, in ms since
        # the bot began talking.
        self.started = asyncio.Event()
        self.marks_audio_ms: list[float] = []
        self.bot_samples_sent = 0
        self.bot_cleared_ms: float | None = None
        self.bot_cleared_monotonic_ms: float | None = None
        self.bot_closed_ms: float | None = None

    # -- upgrade ----------------------------------------------------------------------------
    def check_upgrade(self, request: Request) -> tuple[int, str] | None:
        secret = self.args.twilio_auth_token
        if secret is None:
            return None
        url = self.args.twilio_url or f"ws://{request.headers.get('Host', '')}{request.path}"
        want = base64.b64encode(hmac.new(secret.encode(), url.encode(), hashlib.sha1).digest()).decode()
        got = request.headers.get("X-Twilio-Signature")
        if got is None:
            self.violation(
                "upgrade has no X-Twilio-Signature header (Twilio signs every Media Streams "
                "connection, Twilio security: validating requests)"
            )
            return 403, "missing X-Twilio-Signature\n"
        if not hmac.compare_digest(got.encode(), want.encode()):
            self.violation(
                f'upgrade X-Twilio-Signature "{got}" is not base64(HMAC-SHA1(auth token, "{url}")) '
                "(Twilio security: validating requests)"
            )
            return 403, "bad X-Twilio-Signature\n"
        return None

    # -- frames -----------------------------------------------------------------------------
    def on_binary(self, data: bytes) -> list[str]:
        self.messages["binary"] += 1
        self.violation(
            f"binary frame of {len(data)} bytes (Twilio sends only JSON text messages, "
            f"{SPEC} WebSocket messages)"
        )
        return []

    def on_text(self, text: str) -> list[str]:
        typed = self.typed_message(text, "event", f'{SPEC}: every message is a JSON object with an "event"')
        if typed is None:
            return []
        msg, event = typed
        first, self.first = self.first, False
        if self.stopped:
            self.violation(f'"{event}" after "stop" ("stop" is the last message, {ref("stop")})')
            return []
        if first and event != "connected":
            self.violation(f'first message is "{event}", expected "connected" ({ref("connected")})')
        handler = {
            "connected": self.on_connected,
            "start": self.on_start,
            "media": self.on_media,
            "dtmf": self.on_dtmf,
            "mark": self.on_mark,
            "stop": self.on_stop,
        }.get(event)
        if handler is None:
            self.violation(f'unknown event "{event}" ({SPEC} WebSocket messages from Twilio)')
            return []
        handler(msg)
        return []

    # -- field rules ------------------------------------------------------------------------
    def digits(self, value: Any, field: str, event: str) -> int | None:
        """Twilio sends sequenceNumber, chunk and timestamp as strings of digits."""
        if isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)
        if value is None:
            self.violation(f"{field} is missing ({ref(event)})")
        elif isinstance(value, int) and not isinstance(value, bool):
            self.violation(f"{field} is the number {value}, must be a string of digits ({ref(event)})")
            return value
        else:
            self.violation(f"{field} is {value!r}, must be a string of digits ({ref(event)})")
        return None

    def string(self, obj: dict, key: str, field: str, event: str) -> str | None:
        value = obj.get(key)
        if isinstance(value, str) and value:
            if self.args.strict_sids and key in SID_PATTERNS:
                prefix = SID_PATTERNS[key]
                if not re.fullmatch(prefix + "[0-9a-fA-F]{32}", value):
                    self.violation(
                        f'{field} "{value}" is not {prefix} + 32 hex digits (--strict-sids, {ref(event)})'
                    )
            return value
        self.violation(f"{field} must be a non-empty string, got {value!r} ({ref(event)})")
        return None

    def obj(self, msg: dict, key: str, event: str) -> dict | None:
        value = msg.get(key)
        if isinstance(value, dict):
            return value
        self.violation(f'"{event}" has no "{key}" object ({ref(event)})')
        return None

    def sequence(self, msg: dict, event: str) -> None:
        n = self.digits(msg.get("sequenceNumber"), "sequenceNumber", event)
        if n is None:
            self.next_seq += 1
            return
        if n != self.next_seq:
            if self.next_seq == 1:
                self.violation(
                    f'first sequenceNumber is {n} on "{event}" (must start at 1 and increase by 1, '
                    f"{ref(event)})"
                )
            else:
                self.violation(
                    f'sequenceNumber went {self.next_seq - 1} -> {n} on "{event}" (must increase by 1 '
                    f"per message, {ref(event)})"
                )
        self.next_seq = n + 1

    def body(self, msg: dict, event: str) -> dict | None:
        """The event's own object (`msg[event]`), once the event passed the after-start rules."""
        if not self.after_start(msg, event):
            return None
        return self.obj(msg, event, event)

    def after_start(self, msg: dict, event: str) -> bool:
        if self.start is None:
            self.violation(f'"{event}" before "start" ({ref("start")}: start comes right after connected)')
            self.sequence(msg, event)
            return False
        self.sequence(msg, event)
        sid = msg.get("streamSid")
        if sid != self.stream_sid:
            self.violation(
                f'"{event}" streamSid {sid!r} differs from the stream\'s {self.stream_sid!r} ({ref(event)})'
            )
        return True

    # -- events -----------------------------------------------------------------------------
    def on_connected(self, msg: dict) -> None:
        if self.connected:
            self.violation(f'second "connected" (sent once, {ref("connected")})')
            return
        self.connected = True
        if msg.get("protocol") != "Call":
            self.violation(f'connected.protocol is {msg.get("protocol")!r}, expected "Call" ({ref("connected")})')
        if msg.get("version") != "1.0.0":
            self.violation(f'connected.version is {msg.get("version")!r}, expected "1.0.0" ({ref("connected")})')

    def on_start(self, msg: dict) -> None:
        if self.start is not None:
            self.violation(f'second "start" (sent only once, {ref("start")})')
            return
        self.sequence(msg, "start")
        start = self.obj(msg, "start", "start")
        self.start = start if start is not None else {}
        if start is None:
            return
        sid = self.string(start, "streamSid", "start.streamSid", "start")
        self.stream_sid = sid
        if msg.get("streamSid") != sid:
            self.violation(
                f'start: top-level streamSid {msg.get("streamSid")!r} differs from start.streamSid '
                f'{sid!r} ({ref("start")})'
            )
        self.string(start, "accountSid", "start.accountSid", "start")
        self.string(start, "callSid", "start.callSid", "start")
        tracks = start.get("tracks")
        if (not isinstance(tracks, list) or not tracks or len(set(map(str, tracks))) != len(tracks)
                or not all(t in TRACKS for t in tracks)):
            self.violation(
                f'start.tracks is {tracks!r}, must be a non-empty list of distinct "inbound"/"outbound" '
                f'({ref("start")})'
            )
        else:
            self.tracks_announced = list(tracks)
        if self.args.expect_tracks and tracks != self.args.expect_tracks:
            self.violation(f"start.tracks is {tracks!r}, expected {self.args.expect_tracks!r} (--expect-tracks)")
        params = start.get("customParameters")
        if not isinstance(params, dict):
            self.violation(f'start.customParameters is {params!r}, must be an object ({ref("start")})')
        fmt = start.get("mediaFormat")
        want = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        if not isinstance(fmt, dict):
            self.violation(f'start.mediaFormat is {fmt!r}, must be an object ({ref("start")})')
        else:
            for key, value in want.items():
                got = fmt.get(key)
                if got != value or type(got) is not type(value):
                    self.violation(f"start.mediaFormat.{key} is {got!r}, expected {value!r} ({ref('start')})")
        self.check_expectations(start, "start")
        self.started.set()

    def on_media(self, msg: dict) -> None:
        media = self.body(msg, "media")
        if media is None:
            return
        track = media.get("track")
        if track not in self.tracks_announced:
            self.violation(
                f"media.track {track!r} is not one of start.tracks {self.tracks_announced!r} ({ref('media')})"
            )
            return
        chunk = self.digits(media.get("chunk"), f"media.chunk on track {track}", "media")
        if chunk is not None:
            last = self.chunks.get(track, 0)
            if chunk != last + 1:
                self.violation(
                    f"media.chunk on track {track} went {last} -> {chunk} (must start at 1 and "
                    f"increase by 1, {ref('media')})"
                )
            self.chunks[track] = chunk
        ts = self.digits(media.get("timestamp"), f"media.timestamp on track {track}", "media")
        if ts is not None:
            last_ts = self.timestamps.get(track)
            if last_ts is not None and ts < last_ts:
                self.violation(
                    f"media.timestamp on track {track} went back {last_ts} -> {ts} (milliseconds "
                    f"from the start of the stream, {ref('media')})"
                )
            self.timestamps[track] = ts
        payload = media.get("payload")
        if not isinstance(payload, str):
            self.violation(f"media.payload on track {track} is {payload!r}, must be base64 text ({ref('media')})")
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self.violation(f"media.payload on track {track} is not valid base64 ({ref('media')})")
            return
        if not audio:
            self.violation(f"media.payload on track {track} is empty ({ref('media')})")
            return
        self.add_audio(track, 8000, common.decode("ulaw", audio))

    def on_dtmf(self, msg: dict) -> None:
        dtmf = self.body(msg, "dtmf")
        if dtmf is None:
            return
        if dtmf.get("track") != "inbound_track":
            self.violation(f'dtmf.track is {dtmf.get("track")!r}, expected "inbound_track" ({ref("dtmf")})')
        digit = dtmf.get("digit")
        if not (isinstance(digit, str) and len(digit) == 1 and digit in DTMF_DIGITS):
            self.violation(f"dtmf.digit is {digit!r}, must be one of 0-9 * # ({ref('dtmf')})")

    def on_mark(self, msg: dict) -> None:
        if not self.after_start(msg, "mark"):
            return
        mark = self.obj(msg, "mark", "mark")
        # Twilio only echoes the marks the server sent, in order.
        self.bot_mark_back(mark.get("name") if mark else None, ref("mark"))

    # -- bot (return audio) -----------------------------------------------------------------
    async def talk(self, ws) -> None:
        if not self.bot_talks():
            return
        a = self.args
        samples = self.bot_samples()
        if samples is None:
            return
        ulaw = bytes(common.ulaw_encode(v) for v in samples)
        await self.started.wait()
        if a.bot_delay_ms:
            await asyncio.sleep(a.bot_delay_ms / 1000)
        self.bot_t0 = time.monotonic()
        chunk = int(a.bot_chunk_ms * 8)
        for k, off in enumerate(range(0, len(ulaw), chunk), 1):
            part = ulaw[off:off + chunk]
            await ws.send(json.dumps({"event": "media", "streamSid": self.stream_sid,
                                      "media": {"payload": base64.b64encode(part).decode()}}))
            self.bot_samples_sent += len(part)
            name = f"m{k}"
            await ws.send(json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}))
            self.marks_sent.append(name)
            self.marks_audio_ms.append(round(self.bot_samples_sent / 8, 1))
        if a.bot_clear_after_ms is not None:
            await asyncio.sleep(max(0.0, a.bot_clear_after_ms / 1000 - (time.monotonic() - self.bot_t0)))
            await ws.send(json.dumps({"event": "clear", "streamSid": self.stream_sid}))
            self.bot_cleared_ms = self.bot_ms()
            self.bot_cleared_monotonic_ms = round(1000.0 * time.monotonic(), 3)
        if a.bot_close_after_ms is not None:
            await asyncio.sleep(max(0.0, a.bot_close_after_ms / 1000 - (time.monotonic() - self.bot_t0)))
            self.closed_by_server = "bot left (--bot-close-after-ms)"
            self.bot_closed_ms = self.bot_ms()
            await ws.close(1000, "bot left")

    def on_stop(self, msg: dict) -> None:
        self.stopped = True
        stop = self.body(msg, "stop")
        if stop is None or self.start is None:
            return
        for key in ("accountSid", "callSid"):
            if stop.get(key) != self.start.get(key):
                self.violation(
                    f"stop.{key} {stop.get(key)!r} differs from start.{key} {self.start.get(key)!r} ({ref('stop')})"
                )

    def on_close(self, by_server: bool) -> None:
        if not by_server and not self.stopped:
            self.violation(f'client closed the connection without a "stop" message ({ref("stop")})')

    def extra_report(self) -> dict[str, Any]:
        return {
            "stream_sid": self.stream_sid,
            "start": self.start,
            "chunks": self.chunks,
            "last_timestamps": self.timestamps,
            "bot": {
                "samples_sent": self.bot_samples_sent,
                "marks_sent": self.marks_sent,
                "marks_audio_ms": self.marks_audio_ms,
                "marks_echoed": self.marks_echoed,
                "cleared_ms": self.bot_cleared_ms,
                "cleared_monotonic_ms": self.bot_cleared_monotonic_ms,
                "closed_ms": self.bot_closed_ms,
            } if self.bot_talks() else None,
        }


def main() -> None:
    p = common.base_parser("twilio", __doc__.splitlines()[0], default_auth="bearer")
    p.add_argument("--twilio-auth-token", metavar="SECRET",
                   help="verify X-Twilio-Signature = base64(HMAC-SHA1(SECRET, URL)); else 403")
    p.add_argument("--twilio-url", metavar="URL",
                   help="URL the signature covers (default ws://<Host header><request path>)")
    p.add_argument("--expect-tracks", type=lambda s: s.split(","), metavar="T1[,T2]",
                   help="start.tracks must be exactly this list, e.g. inbound,outbound")
    p.add_argument("--strict-sids", action="store_true",
                   help="accountSid/callSid/streamSid must be AC/CA/MZ + 32 hex digits")
    p.add_argument("--bot-wav", metavar="PATH",
                   help="talk back: send this 8 kHz mono WAV as media + marks once start arrived")
    p.add_argument("--bot-chunk-ms", type=common.positive(float), default=100.0, metavar="MS",
                   help="audio per media message (each followed by a mark)")
    p.add_argument("--bot-delay-ms", type=float, default=0.0, metavar="MS",
                   help="start talking this long after start arrived (the caller hears its peer first)")
    p.add_argument("--bot-clear-after-ms", type=float, metavar="MS",
                   help="send clear this long after the bot began talking (barge-in)")
    p.add_argument("--bot-close-after-ms", type=float, metavar="MS",
                   help="close the connection (1000) this long after the bot began talking")
    p.add_argument("--bot-connections", type=common.positive(int), default=1, metavar="N",
                   help="the bot talks on the first N connections only (a reconnect stays silent)")
    args = p.parse_args()
    common.run("twilio", args, TwilioSession)


if __name__ == "__main__":
    main()
