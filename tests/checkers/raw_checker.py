#!/usr/bin/env python3
"""Strict checker for a raw binary audio stream (Deepgram-style live transcription input).

The client sends only binary frames of the format named on the command line: G.711 µ-law or
A-law (ITU-T G.711) or 16-bit little-endian linear PCM, mono or interleaved stereo, and
authenticates the upgrade with `Authorization: Token <t>` (Deepgram,
https://developers.deepgram.com/reference/speech-to-text/listen-streaming) or `Bearer <t>`.
Channels: mono -> mono; stereo -> caller (channel 0) + callee (channel 1).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import common
from websockets.http11 import Request

SPEC = "raw audio profile"


class RawSession(common.Session):
    upgrade_headers = ("authorization",)

    def __init__(self, checker: common.Checker, index: int):
        super().__init__(checker, index)
        a = self.args
        self.names = ("mono",) if a.channels == 1 else ("caller", "callee")
        self.width = common.BYTES_PER_SAMPLE[a.format] * a.channels

    def check_upgrade(self, request: Request) -> tuple[int, str] | None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query, keep_blank_values=True)
        for key, want in self.args.require_query:
            got = query.get(key)
            if not got:
                self.violation(f"upgrade URL has no {key} query parameter (--require-query {key}={want})")
            elif want != "" and got != [want]:
                self.violation(f"upgrade query {key}={','.join(got)}, expected {want} (--require-query)")
        return None

    def on_text(self, text: str) -> list[str]:
        msg, _ = common.json_object(text)
        kind = msg.get("type") if msg is not None else None
        if isinstance(kind, str) and kind in self.args.allow_text_type:
            self.messages[kind] += 1
            return []
        self.messages["text"] += 1
        self.violation(f"text frame {text[:80]!r} ({SPEC}: binary audio only; --allow-text-type TYPE "
                       "accepts JSON objects of that type)")
        return []

    def on_binary(self, data: bytes) -> list[str]:
        self.messages["binary"] += 1
        a = self.args
        if not data or len(data) % self.width:
            self.violation(
                f"binary frame of {len(data)} bytes is not a whole number of {a.channels}-channel "
                f"{a.format} samples ({self.width} bytes each, {SPEC}: --format {a.format} --channels {a.channels})"
            )
            return []
        samples = common.decode(a.format, data)
        for name, part in zip(self.names, common.deinterleave(samples, a.channels)):
            self.add_audio(name, a.rate, part)
        return []

    def extra_report(self) -> dict[str, Any]:
        a = self.args
        return {"format": {"encoding": a.format, "rate": a.rate, "channels": a.channels}}


def main() -> None:
    p = common.base_parser("raw", __doc__.splitlines()[0], default_auth="token")
    p.add_argument("--format", choices=("ulaw", "alaw", "l16"), required=True,
                   help="sample encoding (l16 = 16-bit little-endian linear PCM)")
    p.add_argument("--rate", type=int, choices=(8000, 16000), required=True, help="sample rate in Hz")
    p.add_argument("--channels", type=int, choices=(1, 2), required=True, help="1 = mono, 2 = interleaved stereo")
    p.add_argument("--require-query", type=common.key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="the upgrade URL must carry KEY=VALUE (KEY= : present with any value)")
    p.add_argument("--allow-text-type", action="append", default=[], metavar="TYPE",
                   help='accept JSON text frames {"type": TYPE} (e.g. KeepAlive, CloseStream)')
    args = p.parse_args()
    if args.expect:
        p.error("--expect checks a metadata object, which raw streams have none of; use --require-query")
    common.run("raw", args, RawSession)


if __name__ == "__main__":
    main()
