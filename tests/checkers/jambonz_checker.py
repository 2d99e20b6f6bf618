#!/usr/bin/env python3
"""Strict checker for the jambonz `listen` verb stream (mod_audio_fork style; this server receives it).

Spec: https://docs.jambonz.org/verbs/verbs/listen (and the older
https://www.jambonz.org/docs/webhooks/listen/): subprotocol audio.jambonz.org, optional HTTP Basic
auth (wsAuth), one JSON text frame of call attributes plus sampleRate, mixType and the app's
metadata, then only binary frames of 16-bit PCM at sampleRate (little-endian), stereo
interleaved. Channels: mono -> caller, stereo -> caller (left) + callee (right), mixed -> mixed.

With --bot-wav it also talks back (bidirectional audio, same page): once the metadata arrived it
sends the WAV (8 kHz mono; the listen must be at 8000) either streamed as binary L16 frames of
--bot-chunk-ms, each followed by {"type":"mark","data":{"name":"m<k>"}} (--bot-mode stream), or
as one {"type":"playAudio"} clip (--bot-mode play), and optionally {"type":"killAudio"} later.
jambonz answers a mark with {"type":"mark","data":{"name":…,"event":"playout"}} once played and
a clip with {"type":"playDone"}: answers out of order, for marks never sent, or a playDone
without a clip are violations; the report lists them with their times.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import common
from websockets.http11 import Request

SPEC = "jambonz listen verb"
SUBPROTOCOL = "audio.jambonz.org"
RATES = (8000, 16000, 24000, 48000, 64000)
MIX_CHANNELS = {"mono": ("caller",), "stereo": ("caller", "callee"), "mixed": ("mixed",)}


class JambonzSession(common.Session):
    upgrade_headers = ("authorization",)

    def __init__(self, checker: common.Checker, index: int):
        super().__init__(checker, index)
        self.metadata: dict[str, Any] | None = None
        self.rate: int | None = None
        self.channels: tuple[str, ...] | None = None
        self.first = True  # no frame yet
        self.metadata_seen = False
        self.started = asyncio.Event()
        self.clips_sent = 0
        self.play_done: list[float | None] = []
        self.bot_samples_sent = 0
        self.killed_ms: float | None = None
        # clearMarks: the marks it made us forget, and those answered anyway (in flight).
        self.marks_forgotten: list[str] = []
        self.marks_late: list[str] = []

    def check_upgrade(self, request: Request) -> tuple[int, str] | None:
        offered = [p.strip() for line in request.headers.get_all("Sec-WebSocket-Protocol") for p in line.split(",")]
        if SUBPROTOCOL not in offered:
            self.violation(
                f"upgrade does not offer subprotocol {SUBPROTOCOL} (offered {offered!r}; the server "
                f"accepts connections with subprotocol {SUBPROTOCOL}, {SPEC})"
            )
        return None

    def select_subprotocol(self, offered: list[str]) -> str | None:
        return SUBPROTOCOL if SUBPROTOCOL in offered else None

    def on_text(self, text: str) -> list[str]:
        self.first = False
        if self.metadata_seen:
            self.text_after_metadata(text)
            return []
        self.metadata_seen = True
        self.messages["metadata"] += 1
        msg, problem = common.json_object(text)
        if msg is None:
            self.violation(f"first frame: {problem} ({SPEC}: one JSON text frame of call attributes first)")
            return []
        self.metadata = msg
        for key in ("callSid", "from", "to"):
            if not isinstance(msg.get(key), str) or (key == "callSid" and not msg.get(key)):
                self.violation(f"metadata.{key} is {msg.get(key)!r}, must be a string (call attributes, {SPEC})")
        rate = msg.get("sampleRate")
        if rate not in RATES or not isinstance(rate, int) or isinstance(rate, bool):
            self.violation(f"metadata.sampleRate is {rate!r}, must be one of {RATES} ({SPEC} sampleRate)")
        else:
            self.rate = rate
        mix = msg.get("mixType")
        if mix not in MIX_CHANNELS:
            self.violation(f'metadata.mixType is {mix!r}, must be "mono", "stereo" or "mixed" ({SPEC} mixType)')
        else:
            self.channels = MIX_CHANNELS[mix]
        self.check_expectations(msg, "metadata")
        self.started.set()
        return []

    def text_after_metadata(self, text: str) -> None:
        msg, _ = common.json_object(text)
        if self.bot_talks() and msg is not None and msg.get("type") in ("mark", "playDone"):
            self.bot_answer(msg)
            return
        if self.args.allow_dtmf and msg is not None and msg.get("event") == "dtmf":
            self.messages["dtmf"] += 1
            return
        self.messages["text"] += 1
        self.violation(
            f"text frame after the metadata frame: {text[:80]!r} (after the initial text frame only "
            f"binary audio frames follow, {SPEC}{'; --allow-dtmf accepts event dtmf' if not self.args.allow_dtmf else ''})"
        )

    def on_binary(self, data: bytes) -> list[str]:
        self.messages["binary"] += 1
        self.first = False
        if not self.metadata_seen:
            self.violation(f"binary frame before the metadata text frame ({SPEC}: the JSON text frame comes first)")
            return []
        if self.rate is None or self.channels is None:
            return []  # the metadata violation already says why this audio cannot be read
        width = 2 * len(self.channels)
        if not data or len(data) % width:
            self.violation(
                f"binary frame of {len(data)} bytes is not a whole number of {len(self.channels)}-channel "
                f"16-bit samples ({width} bytes each, {SPEC}: 16-bit PCM"
                f"{', stereo interleaved' if len(self.channels) == 2 else ''})"
            )
            return []
        samples = common.decode("l16", data)
        for name, part in zip(self.channels, common.deinterleave(samples, len(self.channels))):
            self.add_audio(name, self.rate, part)
        return []

    def on_close(self, by_server: bool) -> None:
        if self.first and not by_server:
            self.violation(f"connection closed before the metadata text frame ({SPEC})")

    # -- bot (bidirectional audio) -----------------------------------------------------------
    def bot_answer(self, msg: dict) -> None:
        kind = msg["type"]
        self.messages[kind] += 1
        if kind == "playDone":
            if len(self.play_done) >= self.clips_sent:
                self.violation(f"playDone without a playAudio clip to answer ({SPEC} bidirectional audio)")
            self.play_done.append(self.bot_ms())
            return
        data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
        name, event = data.get("name"), data.get("event")
        if event != "playout":
            self.violation(f"mark {name!r} answered with event {event!r}, expected \"playout\"")
        if name in self.marks_forgotten:
            # Played while our clearMarks was on its way: counted, the test judges how many.
            self.marks_late.append(name)
            return
        self.bot_mark_back(name, f"{SPEC} bidirectional audio")

    async def talk(self, ws) -> None:
        if not self.bot_talks():
            return
        a = self.args
        samples = self.bot_samples()
        if samples is None:
            return
        await self.started.wait()
        if self.rate != 8000:
            self.violation(f"the checker's bot speaks 8 kHz only; the listen is at {self.rate} (checker use)")
            return
        pcm = common.encode_l16(samples)
        self.bot_t0 = time.monotonic()
        if a.bot_mode == "play":
            await ws.send(json.dumps({"type": "playAudio", "data": {
                "audioContent": base64.b64encode(pcm).decode(), "audioContentType": "raw",
                "sampleRate": "8000"}}))
            self.clips_sent += 1
            self.bot_samples_sent += len(samples)
        else:
            chunk = int(a.bot_chunk_ms * 8) * 2
            for k, off in enumerate(range(0, len(pcm), chunk), 1):
                await ws.send(pcm[off:off + chunk])
                self.bot_samples_sent += len(pcm[off:off + chunk]) // 2
                name = f"m{k}"
                await ws.send(json.dumps({"type": "mark", "data": {"name": name}}))
                self.marks_sent.append(name)
        if a.bot_clear_marks_after_ms is not None:
            await asyncio.sleep(max(0.0, a.bot_clear_marks_after_ms / 1000 - (time.monotonic() - self.bot_t0)))
            await ws.send(json.dumps({"type": "clearMarks"}))
            # The marks not answered yet are forgotten: none may come back, the audio plays on.
            n = len(self.marks_echoed)
            self.marks_forgotten, self.marks_sent = self.marks_sent[n:], self.marks_sent[:n]
        if a.bot_kill_after_ms is not None:
            await asyncio.sleep(max(0.0, a.bot_kill_after_ms / 1000 - (time.monotonic() - self.bot_t0)))
            await ws.send(json.dumps({"type": "killAudio"}))
            self.killed_ms = self.bot_ms()

    def extra_report(self) -> dict[str, Any]:
        return {
            "metadata": self.metadata,
            "bot": {
                "samples_sent": self.bot_samples_sent,
                "marks_sent": self.marks_sent,
                "marks_echoed": self.marks_echoed,
                "marks_forgotten": self.marks_forgotten,
                "marks_late": self.marks_late,
                "clips_sent": self.clips_sent,
                "play_done_ms": self.play_done,
                "killed_ms": self.killed_ms,
            } if self.bot_talks() else None,
        }


def main() -> None:
    p = common.base_parser("jambonz", __doc__.splitlines()[0], default_auth="basic")
    p.add_argument("--allow-dtmf", action="store_true",
                   help='accept JSON text frames {"event": "dtmf", ...} after the metadata (passDtmf)')
    p.add_argument("--bot-wav", metavar="PATH",
                   help="talk back: send this 8 kHz mono WAV once the metadata arrived")
    p.add_argument("--bot-mode", choices=("stream", "play"), default="stream",
                   help="stream: binary L16 frames + marks; play: one playAudio clip")
    p.add_argument("--bot-chunk-ms", type=common.positive(float), default=100.0, metavar="MS",
                   help="stream mode: audio per binary frame (each followed by a mark)")
    p.add_argument("--bot-clear-marks-after-ms", type=float, metavar="MS",
                   help="send clearMarks this long after the bot began talking (pending marks forgotten)")
    p.add_argument("--bot-kill-after-ms", type=float, metavar="MS",
                   help="send killAudio this long after the bot began talking")
    p.add_argument("--bot-connections", type=common.positive(int), default=1, metavar="N",
                   help="the bot talks on the first N connections only")
    args = p.parse_args()
    common.run("jambonz", args, JambonzSession)


if __name__ == "__main__":
    main()
