#!/usr/bin/env python3
"""Strict checker for the jambonz `listen` verb stream (mod_audio_fork style; this server receives it).

Spec: https://docs.jambonz.org/verbs/verbs/listen (and the older
https://www.jambonz.org/docs/webhooks/listen/): subprotocol audio.jambonz.org, optional HTTP Basic
auth (wsAuth), one JSON text frame of call attributes plus sampleRate, mixType and the app's
metadata, then only binary frames of 16-bit PCM at sampleRate (little-endian), stereo
interleaved. Channels: mono -> caller, stereo -> caller (left) + callee (right), mixed -> mixed.
"""

from __future__ import annotations

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
        return []

    def text_after_metadata(self, text: str) -> None:
        msg, _ = common.json_object(text)
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

    def extra_report(self) -> dict[str, Any]:
        return {"metadata": self.metadata}


def main() -> None:
    p = common.base_parser("jambonz", __doc__.splitlines()[0], default_auth="basic")
    p.add_argument("--allow-dtmf", action="store_true",
                   help='accept JSON text frames {"event": "dtmf", ...} after the metadata (passDtmf)')
    args = p.parse_args()
    common.run("jambonz", args, JambonzSession)


if __name__ == "__main__":
    main()
