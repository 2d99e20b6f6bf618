#!/usr/bin/env python3
"""Strict checker for the Genesys AudioHook protocol, version 2 (this server is the AudioHook server).

Spec: https://developer.genesys.cloud/devapps/audiohook (protocol, session walkthrough,
authentication), with Genesys' reference implementation
https://github.com/purecloudlabs/audiohook-reference-implementation for what the prose leaves
open. Channels: external (customer), internal (agent); stereo frames interleave external first.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from websockets.http11 import Request

import common
import httpsig

SPEC = "AudioHook protocol"
HEADERS = ("audiohook-organization-id", "audiohook-correlation-id", "audiohook-session-id")
DURATION = re.compile(r"^PT(?:\d*\.)?\d+S$")
CLIENT_TYPES = ("open", "ping", "paused", "resumed", "discarded", "update", "close", "error")
SERVER_TYPES = ("opened", "pong", "pause", "resume", "disconnect", "closed", "event", "reconnect", "updated")
CLOSE_REASONS = ("end", "error", "disconnect", "reconnect")
ERROR_CODES = (400, 405, 408, 409, 413, 415, 429, 500, 503)
CHANNELS = ("external", "internal")
RATE = 8000
# The reference server refuses text messages longer than this (serversessionimpl onTextMessage).
MAX_TEXT = 65535


def ref(what: str) -> str:
    return f'{SPEC} "{what}"'


def duration(value: Any) -> Decimal | None:
    """ISO 8601 duration in seconds as the protocol writes it: PT<decimal>S."""
    if not isinstance(value, str) or not DURATION.match(value):
        return None
    try:
        return Decimal(value[2:-1])
    except InvalidOperation:
        return None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class AudioHookSession(common.Session):
    upgrade_headers = HEADERS + ("x-api-key", "signature-input", "signature", "authorization")

    def __init__(self, checker: common.Checker, index: int):
        super().__init__(checker, index)
        self.state = "preparing"  # -> active <-> paused -> closed
        self.session_id: str | None = None
        self.header_session: str | None = None
        self.header_org: str | None = None
        self.client_seq = 0
        self.client_serverseq = 0
        self.server_seq = 0
        self.open_params: dict[str, Any] | None = None
        self.media: dict[str, Any] | None = None
        self.frames = 0  # sample frames (one sample per channel) received
        self.discarded = Decimal(0)  # seconds the client declared discarded
        self.last_position = Decimal(0)
        self.disconnect_sent = False
        self.signature: dict[str, Any] | None = None
        self.tolerance = Decimal(str(self.args.position_tolerance_ms)) / 1000

    # -- upgrade ----------------------------------------------------------------------------
    def check_upgrade(self, request: Request) -> tuple[int, str] | None:
        h = request.headers
        for name in HEADERS:
            value = h.get(name)
            if value is None:
                self.violation(f"upgrade has no {name} header ({ref('connection establishment')})")
            elif not common.is_uuid(value):
                self.violation(f"upgrade {name} {value!r} is not a UUID ({ref('connection establishment')})")
        self.header_session = h.get("audiohook-session-id")
        self.header_org = h.get("audiohook-organization-id")
        api_key = h.get("x-api-key")
        if not api_key:
            self.violation(f"upgrade has no X-API-KEY header ({ref('authentication')})")
        elif self.args.api_key is not None and api_key != self.args.api_key:
            self.violation(f"upgrade X-API-KEY {api_key!r} is not the expected --api-key ({ref('authentication')})")
            return 401, "unknown API key\n"
        if self.args.client_secret is not None:
            problems, info = httpsig.verify(
                h.get_all, request.path, self.args.client_secret, common.now(), self.args.max_signature_age_s
            )
            self.signature = {k: v for k, v in info.items() if k != "signature_base"}
            for p in problems:
                self.violation(f"upgrade signature: {p}")
            if problems:
                return 401, "signature verification failed\n"
            self.signature["verified"] = True
        return None

    # -- sending ----------------------------------------------------------------------------
    def send(self, kind: str, parameters: dict[str, Any]) -> str:
        self.server_seq += 1
        self.messages[f"sent:{kind}"] += 1
        return json.dumps({
            "version": "2",
            "id": self.session_id or self.header_session or "00000000-0000-0000-0000-000000000000",
            "type": kind,
            "seq": self.server_seq,
            "clientseq": self.client_seq,
            "parameters": parameters,
        })

    # -- frames -----------------------------------------------------------------------------
    def on_binary(self, data: bytes) -> list[str]:
        self.messages["audio"] += 1
        where = ref("audio") + " frames"
        if self.state != "active":
            why = {"preparing": 'before "opened"', "paused": 'while paused (after "paused")',
                   "closed": 'after "close"'}[self.state]
            self.violation(f"binary audio frame {why} ({where}: audio flows only in an open, unpaused session)")
            return []
        if self.media is None:
            self.violation(f"binary audio frame but the server selected no media ({ref('opened')})")
            return []
        channels = self.media["channels"]
        if not data or len(data) % len(channels):
            self.violation(
                f"audio frame of {len(data)} bytes is not a whole number of {len(channels)}-channel "
                f"PCMU samples ({where}: interleaved, external first)"
            )
            return []
        samples = common.decode("ulaw", data)
        for name, part in zip(channels, common.deinterleave(samples, len(channels))):
            self.add_audio(name, RATE, part)
        self.frames += len(data) // len(channels)
        out = []
        if (self.args.disconnect_after_ms is not None and not self.disconnect_sent
                and self.audio_ms() >= self.args.disconnect_after_ms):
            self.disconnect_sent = True
            out.append(self.send("disconnect", {"reason": "completed", "info": "checker --disconnect-after-ms"}))
        return out

    def on_text(self, text: str) -> list[str]:
        if len(text) > MAX_TEXT:
            self.messages["invalid"] += 1
            self.violation(f"text message of {len(text)} characters, over 64 KiB ({SPEC} message limits)")
            return []
        typed = self.typed_message(text, "type", f'{SPEC}: text messages are JSON objects with a "type"')
        if typed is None:
            return []
        msg, kind = typed
        if self.state == "closed":
            self.violation(f'"{kind}" after "close" (the close transaction ends the session, {ref("close")})')
            return []
        self.check_envelope(msg, kind)
        if kind in SERVER_TYPES:
            self.violation(f'client sent "{kind}", which only the server sends ({ref(kind)})')
            return []
        if kind not in CLIENT_TYPES:
            self.violation(f'unknown message type "{kind}" ({SPEC} message types)')
            return []
        params = msg.get("parameters")
        if not isinstance(params, dict):
            self.violation(f'"{kind}".parameters is {params!r}, must be an object ({ref("message")})')
            params = {}
        if self.state == "preparing" and kind != "open":
            self.violation(f'first message is "{kind}", expected "open" ({ref("open")}: the client opens the session)')
            return []
        position = duration(msg.get("position"))
        return getattr(self, f"msg_{kind}")(params, position)

    # -- common envelope --------------------------------------------------------------------
    def check_envelope(self, msg: dict, kind: str) -> None:
        r = ref("message")
        if msg.get("version") != "2":
            self.violation(f'"{kind}".version is {msg.get("version")!r}, expected "2" ({r})')
        mid = msg.get("id")
        if not common.is_uuid(mid):
            self.violation(f'"{kind}".id {mid!r} is not a UUID ({r})')
        elif self.session_id is None:
            self.session_id = mid
            if self.header_session is not None and mid != self.header_session:
                self.violation(f'"{kind}".id {mid} differs from the audiohook-session-id header '
                               f"{self.header_session} ({r})")
        elif mid != self.session_id:
            self.violation(f'"{kind}".id {mid} differs from the session id {self.session_id} ({r})')
        seq = msg.get("seq")
        if not is_int(seq):
            self.violation(f'"{kind}".seq is {seq!r}, must be an integer ({r}: sequence numbers)')
            self.client_seq += 1
        else:
            if seq != self.client_seq + 1:
                self.violation(f'"{kind}".seq went {self.client_seq} -> {seq} (client seq starts at 1 and '
                               f"increases by 1 per message, {r}: sequence numbers)")
            self.client_seq = seq
        serverseq = msg.get("serverseq")
        if not is_int(serverseq):
            self.violation(f'"{kind}".serverseq is {serverseq!r}, must be an integer ({r}: sequence numbers)')
        else:
            if serverseq > self.server_seq:
                self.violation(f'"{kind}".serverseq {serverseq} is beyond the last seq the server sent, '
                               f"{self.server_seq} ({r}: sequence numbers)")
            elif serverseq < self.client_serverseq:
                self.violation(f'"{kind}".serverseq went back {self.client_serverseq} -> {serverseq} '
                               f"({r}: sequence numbers)")
            else:
                self.client_serverseq = serverseq
        pos = msg.get("position")
        position = duration(pos)
        if position is None:
            self.violation(f'"{kind}".position {pos!r} is not an ISO 8601 duration like "PT1.5S" ({r})')
            return
        if self.state == "paused":
            # Audio is being discarded: the position moves on without frames, never back.
            if position < self.last_position:
                self.violation(f'"{kind}".position went back {self.last_position} s -> {position} s while paused ({r})')
            self.last_position = max(self.last_position, position)
            return
        if kind not in ("resumed", "discarded"):  # those are checked after adding their gap
            self.check_position(kind, position)

    def accounted(self) -> Decimal:
        return Decimal(self.frames) / RATE + self.discarded

    def check_position(self, kind: str, position: Decimal) -> None:
        want = self.accounted()
        self.last_position = want
        if abs(position - want) > self.tolerance:
            self.violation(
                f'"{kind}".position is {position} s but the client sent {self.frames} samples '
                f"({Decimal(self.frames) / RATE} s) and declared {self.discarded} s discarded, "
                f"{want} s in all ({ref('message')} position: the audio stream position)"
            )

    def need_duration(self, params: dict, key: str, kind: str) -> Decimal | None:
        value = duration(params.get(key))
        if value is None:
            self.violation(f'"{kind}".parameters.{key} {params.get(key)!r} is not a "PT<seconds>S" duration ({ref(kind)})')
        return value

    # -- client messages -------------------------------------------------------------------------
    def msg_open(self, params: dict, position: Decimal | None) -> list[str]:
        r = ref("open")
        if self.state != "preparing":
            self.violation(f'second "open" (one open transaction per session, {r})')
            return []
        self.open_params = params
        org = params.get("organizationId")
        if not common.is_uuid(org):
            self.violation(f"open.parameters.organizationId {org!r} is not a UUID ({r})")
        elif self.header_org is not None and org != self.header_org:
            self.violation(f"open.parameters.organizationId {org} differs from the audiohook-organization-id "
                           f"header {self.header_org} ({r})")
        if not common.is_uuid(params.get("conversationId")):
            self.violation(f"open.parameters.conversationId {params.get('conversationId')!r} is not a UUID ({r})")
        participant = params.get("participant")
        if not isinstance(participant, dict):
            self.violation(f"open.parameters.participant is {participant!r}, must be an object ({r})")
        else:
            if not common.is_uuid(participant.get("id")):
                self.violation(f"open.parameters.participant.id {participant.get('id')!r} is not a UUID ({r})")
            for key in ("ani", "aniName", "dnis"):
                if not isinstance(participant.get(key), str):
                    self.violation(f"open.parameters.participant.{key} is {participant.get(key)!r}, must be a string ({r})")
        for key, kinds, what in (("language", str, "a string"), ("customConfig", dict, "an object"),
                                 ("supportedLanguages", bool, "a boolean"), ("continuedSessions", list, "a list")):
            if key in params and not isinstance(params[key], kinds):
                self.violation(f"open.parameters.{key} is {params[key]!r}, must be {what} ({r})")
        offers = params.get("media")
        valid: list[dict] = []
        if not isinstance(offers, list) or not offers:
            self.violation(f"open.parameters.media is {offers!r}, must be a non-empty list of offers ({r})")
        else:
            for i, offer in enumerate(offers):
                problem = self.offer_problem(offer)
                if problem:
                    self.violation(f"open.parameters.media[{i}] {json.dumps(offer)}: {problem} ({r})")
                else:
                    valid.append(offer)
        self.media = self.choose(valid)
        self.check_expectations(params, "open.parameters")
        self.state = "active"
        opened = {"media": [self.media] if self.media else [], "startPaused": False}
        return [self.send("opened", opened)]

    @staticmethod
    def offer_problem(offer: Any) -> str | None:
        if not isinstance(offer, dict):
            return "not an object"
        if offer.get("type") != "audio":
            return f'type {offer.get("type")!r} is not "audio"'
        if offer.get("format") not in ("PCMU", "L16"):
            return f'format {offer.get("format")!r} is not "PCMU" or "L16"'
        ch = offer.get("channels")
        if not isinstance(ch, list) or not ch or len(set(map(str, ch))) != len(ch) or not all(c in CHANNELS for c in ch):
            return f'channels {ch!r} is not a non-empty list of distinct "external"/"internal"'
        if offer.get("rate") != RATE or not is_int(offer.get("rate")):
            return f"rate {offer.get('rate')!r} is not {RATE}"
        return None

    def choose(self, offers: list[dict]) -> dict | None:
        pcmu = [o for o in offers if o["format"] == "PCMU"]
        want = self.args.select_channels
        if want is not None:
            pcmu = [o for o in pcmu if o["channels"] == want]
        if not pcmu:
            self.violation(
                f"open offers no PCMU media{' with channels ' + ','.join(want) if want else ''} "
                f"(--select-channels), so the server selects none ({ref('opened')})"
            )
            return None
        return {k: pcmu[0][k] for k in ("type", "format", "channels", "rate")}

    def msg_ping(self, params: dict, position: Decimal | None) -> list[str]:
        if "rtt" in params:
            self.need_duration(params, "rtt", "ping")
        return [self.send("pong", {})]

    def msg_paused(self, params: dict, position: Decimal | None) -> list[str]:
        self.empty(params, "paused")
        if self.state == "paused":
            self.violation(f'"paused" while already paused ({ref("paused")})')
        self.state = "paused"
        return []

    def msg_resumed(self, params: dict, position: Decimal | None) -> list[str]:
        if self.state != "paused":
            self.violation(f'"resumed" without a preceding "paused" ({ref("resumed")})')
        self.state = "active"
        self.account_discard(params, position, "resumed")
        return []

    def msg_discarded(self, params: dict, position: Decimal | None) -> list[str]:
        self.account_discard(params, position, "discarded")
        return []

    def account_discard(self, params: dict, position: Decimal | None, kind: str) -> None:
        """`start` is where the gap began (the audio accounted so far); `discarded` its length."""
        start = self.need_duration(params, "start", kind)
        gap = self.need_duration(params, "discarded", kind)
        if start is not None and abs(start - self.accounted()) > self.tolerance:
            self.violation(f'"{kind}".parameters.start is {start} s but the stream was at {self.accounted()} s '
                           f"({ref(kind)})")
        if gap is not None:
            self.discarded += gap
        if position is not None:
            self.check_position(kind, position)

    def msg_update(self, params: dict, position: Decimal | None) -> list[str]:
        if "language" in params and not isinstance(params["language"], str):
            self.violation(f'"update".parameters.language is {params["language"]!r}, must be a string ({ref("update")})')
        return []

    def msg_error(self, params: dict, position: Decimal | None) -> list[str]:
        if params.get("code") not in ERROR_CODES or not is_int(params.get("code")):
            self.violation(f'"error".parameters.code {params.get("code")!r} is not one of {ERROR_CODES} ({ref("error")})')
        if not isinstance(params.get("message"), str):
            self.violation(f'"error".parameters.message is {params.get("message")!r}, must be a string ({ref("error")})')
        return []

    def msg_close(self, params: dict, position: Decimal | None) -> list[str]:
        if params.get("reason") not in CLOSE_REASONS:
            self.violation(f'"close".parameters.reason {params.get("reason")!r} is not one of {CLOSE_REASONS} '
                           f"({ref('close')})")
        self.state = "closed"
        return [self.send("closed", {})]

    def on_close(self, by_server: bool) -> None:
        if not by_server and self.state != "closed":
            self.violation(f'client closed the WebSocket without a "close" transaction ({ref("close")}: '
                           "the client closes the session with close/closed before disconnecting)")

    def empty(self, params: dict, kind: str) -> None:
        if params:
            self.violation(f'"{kind}".parameters must be empty, got {json.dumps(params)} ({ref(kind)})')

    def extra_report(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "state": self.state,
            "open": self.open_params,
            "selected_media": self.media,
            "position_s": str(self.accounted()),
            "signature": self.signature,
        }


def secret(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SystemExit(f"--client-secret is not base64: {e}") from e


def main() -> None:
    p = common.base_parser("audiohook", __doc__.splitlines()[0], default_auth="header:X-API-KEY")
    p.add_argument("--api-key", metavar="KEY", help="X-API-KEY must equal KEY (else 401)")
    p.add_argument("--client-secret", type=secret, metavar="BASE64",
                   help="verify the RFC 9421 signature with this client secret (else 401)")
    p.add_argument("--max-signature-age-s", type=common.positive(float), default=10.0, metavar="S",
                   help="oldest accepted signature 'created' time")
    p.add_argument("--select-channels", type=lambda s: s.split(","), metavar="external[,internal]",
                   help="select the PCMU offer with exactly these channels (default: first PCMU offer)")
    p.add_argument("--position-tolerance-ms", type=float, default=0.0625, metavar="MS",
                   help="allowed |position - audio accounted| (default half a sample at 8 kHz)")
    p.add_argument("--disconnect-after-ms", type=common.positive(float), metavar="N",
                   help="send 'disconnect' (reason completed) once N ms of audio arrived")
    args = p.parse_args()
    common.run("audiohook", args, AudioHookSession)


if __name__ == "__main__":
    main()
