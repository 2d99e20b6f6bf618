#!/usr/bin/env python3
"""A browser stand-in for the webrtc_* e2e tests: aiortc's WebRTC stack (ICE, DTLS-SRTP,
rtcp-mux) signalling with SIP over WebSocket (RFC 7118) through Kamailio.

  call    INVITE sip:phone@PROXY with an aiortc offer (PCMU only), ACK (with X-Fork: FORK),
          play --play, record what comes back to --record, BYE after --seconds.
  answer  REGISTER as `browser`, print "registered", take one INVITE, answer it, play and
          record the same way, BYE after --seconds.

With --turn, the only ICE server is that TURN server and the ICE transport policy is
`relay` (a browser behind a NAT that only a TURN relay crosses): every local candidate is a
relayed one, and all media goes through the relay.

The source is sent as PCMU in 20 ms frames from a 16-bit mono 8 kHz WAV; the recording is
what the remote audio track decoded, written as the same kind of WAV. A JSON report goes to
--report: ok, error, the SDPs exchanged, the ICE/DTLS states seen. Every wait is bounded; the
whole run stops at --deadline seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import random
import string
import sys
import time
import wave

import av
import websockets
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

PTIME = 0.02
RATE = 8000


def token(n: int = 10) -> str:
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


class WavTrack(MediaStreamTrack):
    """Plays a 16-bit mono 8 kHz WAV in real time, then silence."""

    kind = "audio"

    def __init__(self, path: str):
        super().__init__()
        with wave.open(path, "rb") as w:
            if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, RATE):
                raise ValueError(f"{path}: need 16-bit mono {RATE} Hz")
            self.pcm = w.readframes(w.getnframes())
        self.pos = 0
        self.start: float | None = None
        self.pts = 0

    async def recv(self) -> av.AudioFrame:
        n = int(RATE * PTIME)
        if self.start is None:
            self.start = time.time()
        else:
            self.pts += n
            wait = self.start + self.pts / RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        chunk = self.pcm[self.pos : self.pos + 2 * n]
        self.pos += 2 * n
        chunk = chunk + b"\0" * (2 * n - len(chunk))
        frame = av.AudioFrame(format="s16", layout="mono", samples=n)
        frame.planes[0].update(chunk)
        frame.sample_rate = RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


class Recorder:
    """Collects a remote audio track's decoded samples."""

    def __init__(self):
        self.pcm = bytearray()
        self.rate = RATE
        self.task: asyncio.Task | None = None

    def attach(self, track) -> None:
        async def run():
            while True:
                try:
                    frame = await track.recv()
                except Exception:
                    return
                self.rate = frame.sample_rate
                self.pcm += bytes(frame.planes[0])[: frame.samples * 2]

        self.task = asyncio.ensure_future(run())

    def write(self, path: str) -> None:
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rate)
            w.writeframes(bytes(self.pcm))


class Sip:
    """Just enough SIP over one WebSocket for one registration and one call."""

    def __init__(self, ws, proxy: str):
        self.ws = ws
        self.proxy = proxy
        self.host = token() + ".invalid"
        self.contact = f"<sip:browser@{self.host};transport=ws>"
        self.inbox: list[dict] = []

    @staticmethod
    def parse(text: str) -> dict:
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        first = lines[0].split(" ", 2)
        msg = {"first": lines[0], "headers": headers, "body": body}
        if first[0] == "SIP/2.0":
            msg["status"] = int(first[1])
        else:
            msg["method"], msg["uri"] = first[0], first[1]
        return msg

    @staticmethod
    def get(msg: dict, name: str) -> str | None:
        for n, v in msg["headers"]:
            if n == name:
                return v
        return None

    @staticmethod
    def get_all(msg: dict, name: str) -> list[str]:
        out = []
        for n, v in msg["headers"]:
            if n == name:
                out += [p.strip() for p in v.split(",")] if name == "record-route" else [v]
        return out

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self, want, timeout: float) -> dict:
        """The next message `want(msg)` accepts; others are kept."""
        deadline = time.time() + timeout
        while True:
            for i, m in enumerate(self.inbox):
                if want(m):
                    return self.inbox.pop(i)
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no matching SIP message")
            raw = await asyncio.wait_for(self.ws.recv(), left)
            self.inbox.append(self.parse(raw if isinstance(raw, str) else raw.decode()))

    def request(self, method, uri, cseq, call_id, from_, to, routes=(), body="", extra=()) -> str:
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/WS {self.host};branch=z9hG4bK{token()};rport",
            "Max-Forwards: 70",
            *[f"Route: {r}" for r in routes],
            f"From: {from_}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: {self.contact}",
            *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def response(self, req: dict, status: str, to_tag: str, body: str = "") -> str:
        to = self.get(req, "to") or ""
        if to_tag and ";tag=" not in to:
            to += f";tag={to_tag}"
        lines = [f"SIP/2.0 {status}"]
        lines += [f"Via: {v}" for v in self.get_all(req, "via")]
        lines += [f"Record-Route: {r}" for r in self.get_all(req, "record-route")]
        lines += [
            f"From: {self.get(req, 'from')}",
            f"To: {to}",
            f"Call-ID: {self.get(req, 'call-id')}",
            f"CSeq: {self.get(req, 'cseq')}",
            f"Contact: {self.contact}",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body


def uri_of(header: str) -> str:
    return header[header.index("<") + 1 : header.index(">")] if "<" in header else header.split(";")[0]


def pcmu_only(transceiver) -> None:
    caps = RTCRtpSender.getCapabilities("audio").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType == "audio/PCMU"])


def peer_connection(args) -> RTCPeerConnection:
    """A peer connection; with --turn, relay-only through that TURN server."""
    if not args.turn:
        return RTCPeerConnection()
    server = RTCIceServer(urls=args.turn, username=args.turn_user, credential=args.turn_password)
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[server], iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    )


async def wait_connected(pc, report, timeout: float) -> None:
    deadline = time.time() + timeout
    while pc.connectionState != "connected":
        report["states"].append(pc.connectionState) if report["states"][-1:] != [pc.connectionState] else None
        if pc.connectionState in ("failed", "closed") or time.time() > deadline:
            raise RuntimeError(f"WebRTC connection {pc.connectionState} (not connected)")
        await asyncio.sleep(0.05)
    report["states"].append("connected")


async def call(args, sip: Sip, report: dict) -> None:
    pc = peer_connection(args)
    rec = Recorder()
    pc.on("track", rec.attach)
    t = pc.addTransceiver(WavTrack(args.play), direction="sendrecv")
    pcmu_only(t)
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    report["offer"] = offer
    call_id, tag = token(16), token()
    from_ = f"<sip:browser@{args.proxy}>;tag={tag}"
    target = f"sip:phone@{args.proxy}"
    await sip.send(sip.request("INVITE", target, 1, call_id, from_, f"<{target}>", body=offer))
    final = await sip.recv(lambda m: m.get("status", 0) >= 200 and sip.get(m, "call-id") == call_id, 15)
    if final["status"] != 200:
        raise RuntimeError(f"INVITE answered {final['first']}")
    report["answer"] = final["body"]
    to = sip.get(final, "to")
    routes = list(reversed(sip.get_all(final, "record-route")))
    remote = uri_of(sip.get(final, "contact") or target)
    await sip.send(
        sip.request("ACK", remote, 1, call_id, from_, to, routes, extra=[f"X-Fork: {args.fork}"])
    )
    await pc.setRemoteDescription(RTCSessionDescription(final["body"], "answer"))
    await wait_connected(pc, report, 15)
    await asyncio.sleep(args.seconds)
    await sip.send(sip.request("BYE", remote, 2, call_id, from_, to, routes))
    bye = await sip.recv(lambda m: m.get("status", 0) >= 200 and "BYE" in (sip.get(m, "cseq") or ""), 10)
    report["bye"] = bye["first"]
    await pc.close()
    rec.write(args.record)


async def answer(args, sip: Sip, report: dict) -> None:
    call_id, tag = token(16), token()
    aor = f"<sip:browser@{args.proxy}>"
    await sip.send(
        sip.request("REGISTER", f"sip:{args.proxy}", 1, call_id, f"{aor};tag={tag}", aor,
                    extra=["Expires: 600"])
    )
    reg = await sip.recv(lambda m: m.get("status", 0) >= 200, 10)
    if reg["status"] != 200:
        raise RuntimeError(f"REGISTER answered {reg['first']}")
    print("registered", flush=True)
    invite = await sip.recv(lambda m: m.get("method") == "INVITE", args.deadline)
    report["offer"] = invite["body"]
    pc = peer_connection(args)
    rec = Recorder()
    pc.on("track", rec.attach)
    await pc.setRemoteDescription(RTCSessionDescription(invite["body"], "offer"))
    t = pc.getTransceivers()[0]
    t.direction = "sendrecv"
    t.sender.replaceTrack(WavTrack(args.play))
    pcmu_only(t)
    await pc.setLocalDescription(await pc.createAnswer())
    report["answer"] = pc.localDescription.sdp
    my_tag = token()
    ok = sip.response(invite, "200 OK", my_tag, pc.localDescription.sdp)
    await sip.send(ok)
    # Retransmit the 200 until the ACK (RFC 3261 §13.3.1.4), bounded.
    for _ in range(20):
        try:
            await sip.recv(lambda m: m.get("method") == "ACK", 0.5)
            break
        except (TimeoutError, asyncio.TimeoutError):
            await sip.send(ok)
    else:
        raise RuntimeError("no ACK for the 200 OK")
    await wait_connected(pc, report, 15)
    await asyncio.sleep(args.seconds)
    cid = sip.get(invite, "call-id")
    routes = sip.get_all(invite, "record-route")
    remote = uri_of(sip.get(invite, "contact") or "")
    to = sip.get(invite, "from")
    from_ = (sip.get(invite, "to") or "") + f";tag={my_tag}"
    await sip.send(sip.request("BYE", remote, 1, cid, from_, to, routes))
    bye = await sip.recv(lambda m: m.get("status", 0) >= 200 and "BYE" in (sip.get(m, "cseq") or ""), 10)
    report["bye"] = bye["first"]
    await pc.close()
    rec.write(args.record)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["call", "answer"])
    p.add_argument("--ws", required=True, help="ws://host:port of the proxy")
    p.add_argument("--proxy", required=True, help="the proxy's SIP domain (host)")
    p.add_argument("--play", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--fork", default="no")
    p.add_argument("--deadline", type=float, default=40.0)
    p.add_argument("--turn", help="turn:host:port, the only ICE server (relay-only)")
    p.add_argument("--turn-user", default="")
    p.add_argument("--turn-password", default="")
    args = p.parse_args()
    report = {"ok": False, "error": None, "states": []}
    try:
        async with websockets.connect(args.ws, subprotocols=["sip"], open_timeout=10) as ws:
            sip = Sip(ws, args.proxy)
            job = call if args.mode == "call" else answer
            await asyncio.wait_for(job(args, sip, report), args.deadline)
        report["ok"] = True
    except Exception as e:  # the report says what went wrong; the test prints it
        report["error"] = f"{type(e).__name__}: {e}"
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
