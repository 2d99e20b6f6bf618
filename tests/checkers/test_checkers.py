"""Self-tests of the checkers: each runs a checker as a process (its real command line), drives it
with a small client that sends (a) a correct conversation built from the specification's
examples and (b) one specific violation, and asserts the report holds exactly that violation.

Run: python3 -m unittest discover -s tests/checkers -v
"""

from __future__ import annotations

import array
import asyncio
import base64
import hashlib
import hmac
import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import httpsig  # noqa: E402

STEP_TIMEOUT_S = 10.0


def signal_8k(n: int, seed: int = 1) -> list[int]:
    """Deterministic speech-like test audio: two tones plus noise, 16-bit."""
    rnd = random.Random(seed)
    return [
        int(8000 * math.sin(2 * math.pi * 440 * i / 8000) + 3000 * math.sin(2 * math.pi * 1234 * i / 8000)
            + rnd.uniform(-2000, 2000))
        for i in range(n)
    ]


def ulaw_bytes(samples: list[int]) -> bytes:
    return bytes(common.ulaw_encode(s) for s in samples)


def alaw_bytes(samples: list[int]) -> bytes:
    return bytes(common.alaw_encode(s) for s in samples)


def l16_bytes(samples: list[int]) -> bytes:
    a = array.array("h", samples)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def interleave(*channels: bytes, width: int) -> bytes:
    out = bytearray()
    for i in range(0, len(channels[0]), width):
        for ch in channels:
            out += ch[i:i + width]
    return bytes(out)


class Run:
    """One checker process: started with its CLI, its port read from 'listening <port>'."""

    def __init__(self, profile: str, *args: str, exit_after: int | None = 1):
        self.dir = tempfile.TemporaryDirectory(prefix=f"checker-{profile}-")
        self.report_path = Path(self.dir.name) / "report.json"
        self.wav_dir = Path(self.dir.name) / "wav"
        cmd = [sys.executable, str(HERE / f"{profile}_checker.py"), "--listen", "127.0.0.1:0",
               "--report", str(self.report_path), "--wav-dir", str(self.wav_dir), "--max-duration-s", "30"]
        if exit_after:
            cmd += ["--exit-after", str(exit_after)]
        self.proc = subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], STEP_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening "):
            self.proc.kill()
            raise AssertionError(f"checker did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(line.split()[1])
        self.url = f"ws://127.0.0.1:{self.port}"

    def report(self, terminate: bool = False) -> dict:
        if terminate:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("checker did not exit")
        self.stderr = self.proc.stderr.read()
        return json.loads(self.report_path.read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.dir.cleanup()


def drive(coro) -> object:
    return asyncio.run(asyncio.wait_for(coro, STEP_TIMEOUT_S))


class CheckerCase(unittest.TestCase):
    profile = ""

    def start(self, *args: str, exit_after: int | None = 1) -> Run:
        run = Run(self.profile, *args, exit_after=exit_after)
        self.addCleanup(run.close)
        return run

    def assertViolations(self, report: dict, expected: list[str]) -> None:
        self.assertEqual(report["violations"], expected, json.dumps(report["violations"], indent=1))
        self.assertEqual(report["ok"], not expected)


# --- Twilio Media Streams -------------------------------------------------------------------

SID = {"accountSid": "AC" + "1" * 32, "callSid": "CA" + "2" * 32, "streamSid": "MZ" + "3" * 32}


class TwilioClient:
    """Builds the messages of the spec's examples (websocket-messages page)."""

    def __init__(self, tracks=("inbound",)):
        self.seq = 0
        self.chunk = {t: 0 for t in tracks}
        self.tracks = list(tracks)

    def connected(self) -> dict:
        return {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    def next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    def start(self, **over) -> dict:
        start = {"accountSid": SID["accountSid"], "streamSid": SID["streamSid"], "callSid": SID["callSid"],
                 "tracks": self.tracks, "customParameters": {"FirstName": "Jane", "RemoteParty": "Bob"},
                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
        start.update(over)
        return {"event": "start", "sequenceNumber": self.next_seq(), "start": start, "streamSid": SID["streamSid"]}

    def media(self, track: str, payload: bytes, **over) -> dict:
        self.chunk[track] += 1
        media = {"track": track, "chunk": str(self.chunk[track]), "timestamp": str(20 * (self.chunk[track] - 1)),
                 "payload": base64.b64encode(payload).decode()}
        media.update(over)
        return {"event": "media", "sequenceNumber": self.next_seq(), "media": media, "streamSid": SID["streamSid"]}

    def dtmf(self) -> dict:
        return {"event": "dtmf", "streamSid": SID["streamSid"], "sequenceNumber": self.next_seq(),
                "dtmf": {"track": "inbound_track", "digit": "1"}}

    def stop(self) -> dict:
        return {"event": "stop", "sequenceNumber": self.next_seq(),
                "stop": {"accountSid": SID["accountSid"], "callSid": SID["callSid"]}, "streamSid": SID["streamSid"]}


async def send_all(url: str, messages: list, **kw) -> str | None:
    """Sends each message (dicts as JSON), closes; returns the negotiated subprotocol."""
    async with connect(url, **kw) as ws:
        for m in messages:
            await ws.send(m if isinstance(m, (bytes, str)) else json.dumps(m))
        return ws.subprotocol


class TwilioTest(CheckerCase):
    profile = "twilio"

    def conversation(self, c: TwilioClient, audio: dict[str, bytes], frames: int = 5) -> list:
        msgs = [c.connected(), c.start()]
        for i in range(frames):
            for t, data in audio.items():
                msgs.append(c.media(t, data[160 * i:160 * (i + 1)]))
        return msgs

    def test_correct_stream_both_tracks(self):
        run = self.start("--expect-tracks", "inbound,outbound", "--expect", "customParameters.FirstName=Jane",
                         "--strict-sids")
        c = TwilioClient(("inbound", "outbound"))
        source = signal_8k(1200, 1)
        inbound, outbound = ulaw_bytes(source[200:1000]), ulaw_bytes(signal_8k(800, 2))
        msgs = self.conversation(c, {"inbound": inbound, "outbound": outbound}) + [c.dtmf(), c.stop()]
        drive(send_all(run.url + "/media", msgs))
        report = run.report()
        self.assertViolations(report, [])
        self.assertEqual(report["tracks"], {"inbound": {"samples": 800, "rate": 8000},
                                            "outbound": {"samples": 800, "rate": 8000}})
        self.assertEqual(report["messages"], {"connected": 1, "start": 1, "media": 10, "dtmf": 1, "stop": 1})
        rate, channels, samples = common.read_wav(run.wav_dir / "c1-outbound.wav")
        self.assertEqual((rate, channels), (8000, 1))
        self.assertEqual(list(samples), [common.ULAW_TABLE[b] for b in outbound])
        # What the e2e tests do with a WAV: find it, sample-exact, inside the linear source.
        src = run.wav_dir / "source.wav"
        common.write_wav(src, 8000, array.array("h", source))
        compare = subprocess.run([sys.executable, str(HERE / "compare.py"), str(run.wav_dir / "c1-inbound.wav"),
                                  str(src), "--quantize", "ulaw"], capture_output=True, text=True, timeout=60)
        self.assertEqual(compare.returncode, 0, compare.stderr)
        self.assertIn("exact match: 800 samples equal at lag 200", compare.stdout)

    def violation(self, mutate, *args: str) -> dict:
        run = self.start(*args)
        c = TwilioClient()
        msgs = mutate(c)
        drive(send_all(run.url, msgs))
        return run.report()

    def test_chunk_skip(self):
        def mutate(c):
            msgs = self.conversation(c, {"inbound": bytes(160 * 4)}, frames=4)
            c.chunk["inbound"] += 1  # chunk 5 never sent
            return msgs + [c.media("inbound", bytes(160)), c.stop()]
        self.assertViolations(self.violation(mutate), [
            'conn 1: media.chunk on track inbound went 4 -> 6 (must start at 1 and increase by 1, '
            'Twilio Media Streams "media" message)'])

    def test_sequence_number_as_number(self):
        def mutate(c):
            msgs = self.conversation(c, {"inbound": bytes(320)}, frames=2)
            msgs[2]["sequenceNumber"] = int(msgs[2]["sequenceNumber"])
            return msgs + [c.stop()]
        self.assertViolations(self.violation(mutate), [
            'conn 1: sequenceNumber is the number 2, must be a string of digits (Twilio Media Streams "media" message)'])

    def test_sequence_gap(self):
        def mutate(c):
            msgs = self.conversation(c, {"inbound": bytes(320)}, frames=2)
            c.seq += 1
            return msgs + [c.stop()]
        self.assertViolations(self.violation(mutate), [
            'conn 1: sequenceNumber went 3 -> 5 on "stop" (must increase by 1 per message, '
            'Twilio Media Streams "stop" message)'])

    def test_media_before_start(self):
        def mutate(c):
            media = c.media("inbound", bytes(160))
            start = c.start()
            return [c.connected(), media, start, c.stop()]
        self.assertViolations(self.violation(mutate), [
            'conn 1: "media" before "start" (Twilio Media Streams "start" message: start comes right after connected)'])

    def test_start_first(self):
        def mutate(c):
            return [c.start(), c.media("inbound", bytes(160)), c.stop()]
        self.assertViolations(self.violation(mutate), [
            'conn 1: first message is "start", expected "connected" (Twilio Media Streams "connected" message)'])

    def test_timestamp_backwards(self):
        def mutate(c):
            msgs = self.conversation(c, {"inbound": bytes(480)}, frames=2)
            return msgs + [c.media("inbound", bytes(160), timestamp="10"), c.stop()]
        self.assertViolations(self.violation(mutate), [
            'conn 1: media.timestamp on track inbound went back 20 -> 10 (milliseconds from the start of '
            'the stream, Twilio Media Streams "media" message)'])

    def test_stream_sid_changes(self):
        def mutate(c):
            msgs = self.conversation(c, {"inbound": bytes(320)}, frames=2)
            msgs[-1]["streamSid"] = "MZ" + "9" * 32
            return msgs + [c.stop()]
        self.assertViolations(self.violation(mutate), [
            f'conn 1: "media" streamSid \'MZ{"9" * 32}\' differs from the stream\'s \'{SID["streamSid"]}\' '
            '(Twilio Media Streams "media" message)'])

    def test_wrong_encoding(self):
        def mutate(c):
            start = c.start(mediaFormat={"encoding": "audio/l16", "sampleRate": 8000, "channels": 1})
            return [c.connected(), start, c.stop()]
        self.assertViolations(self.violation(mutate), [
            "conn 1: start.mediaFormat.encoding is 'audio/l16', expected 'audio/x-mulaw' "
            '(Twilio Media Streams "start" message)'])

    def test_message_after_stop(self):
        def mutate(c):
            return [c.connected(), c.start(), c.stop(), c.media("inbound", bytes(160))]
        self.assertViolations(self.violation(mutate), [
            'conn 1: "media" after "stop" ("stop" is the last message, Twilio Media Streams "stop" message)'])

    def test_close_without_stop(self):
        self.assertViolations(self.violation(lambda c: [c.connected(), c.start()]), [
            'conn 1: client closed the connection without a "stop" message (Twilio Media Streams "stop" message)'])

    def test_not_json(self):
        def mutate(c):
            return [c.connected(), c.start(), "media please", c.stop()]
        self.assertViolations(self.violation(mutate), [
            "conn 1: text frame is not JSON (Expecting value: line 1 column 1 (char 0)) (Twilio Media Streams: "
            'every message is a JSON object with an "event")'])

    def test_bad_base64(self):
        def mutate(c):
            head = [c.connected(), c.start()]
            m = c.media("inbound", bytes(160))
            m["media"]["payload"] = "not base64!"
            return head + [m, c.stop()]
        self.assertViolations(self.violation(mutate), [
            'conn 1: media.payload on track inbound is not valid base64 (Twilio Media Streams "media" message)'])

    def test_twilio_signature(self):
        run = self.start("--twilio-auth-token", "secret", exit_after=2)
        url = f"ws://127.0.0.1:{run.port}/media"
        good = base64.b64encode(hmac.new(b"secret", url.encode(), hashlib.sha1).digest()).decode()
        c = TwilioClient()
        drive(send_all(url, [c.connected(), c.start(), c.stop()], additional_headers={"X-Twilio-Signature": good}))
        with self.assertRaises(InvalidStatus) as e:
            drive(send_all(url, [], additional_headers={"X-Twilio-Signature": "AAAA"}))
        self.assertEqual(e.exception.response.status_code, 403)
        self.assertViolations(run.report(), [
            f'conn 2: upgrade X-Twilio-Signature "AAAA" is not base64(HMAC-SHA1(auth token, "{url}")) '
            "(Twilio security: validating requests)"])

    def test_expect_token_bearer(self):
        run = self.start("--expect-token", "t0k")
        with self.assertRaises(InvalidStatus) as e:
            drive(send_all(run.url, [], additional_headers={"Authorization": "Bearer wrong"}))
        self.assertEqual(e.exception.response.status_code, 401)
        self.assertViolations(run.report(), [
            'conn 1: upgrade Authorization "Bearer wrong" is not "Bearer <expected token>" (--auth-scheme bearer)'])

    def test_reject_then_accept_and_close_after(self):
        run = self.start("--reject-upgrade", "503", "--reject-count", "1", "--close-after-ms", "60", exit_after=2)
        with self.assertRaises(InvalidStatus) as e:
            drive(send_all(run.url, []))
        self.assertEqual(e.exception.response.status_code, 503)

        async def stream_until_closed():
            c = TwilioClient()
            async with connect(run.url) as ws:
                for m in self.conversation(c, {"inbound": bytes(160 * 20)}, frames=20):
                    await ws.send(json.dumps(m))
                await ws.wait_closed()
                return ws.close_code
        self.assertEqual(drive(stream_until_closed()), 1001)
        report = run.report()
        self.assertViolations(report, [])
        self.assertEqual((report["rejected_upgrades"], report["connections"]), (1, 1))
        self.assertEqual(report["per_connection"][1]["close"]["by"], "server")

    def bot_call(self, run: Run, echo) -> list[dict]:
        """Plays fork-agent: connected + start, then reads what the bot sends for a while and
        answers its marks through `echo(c, marks_so_far) -> list of names to echo now`."""
        async def call():
            c = TwilioClient()
            got = []
            async with connect(run.url) as ws:
                for m in (c.connected(), c.start()):
                    await ws.send(json.dumps(m))
                marks = []
                try:
                    while True:
                        msg = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                        got.append(msg)
                        if msg["event"] == "mark":
                            marks.append(msg["mark"]["name"])
                            for name in echo(marks):
                                await ws.send(json.dumps({"event": "mark", "sequenceNumber": c.next_seq(),
                                                          "streamSid": SID["streamSid"],
                                                          "mark": {"name": name}}))
                except asyncio.TimeoutError:
                    pass
                await ws.send(json.dumps(c.stop()))
            return got
        return drive(call())

    def test_bot_sends_audio_and_marks_and_takes_echoes_in_order(self):
        samples = [common.ULAW_TABLE[b] for b in ulaw_bytes(signal_8k(2000, 3))]
        tmp = tempfile.TemporaryDirectory(prefix="bot-wav-")
        self.addCleanup(tmp.cleanup)
        wav = Path(tmp.name) / "bot.wav"
        common.write_wav(wav, 8000, array.array("h", samples))
        run = self.start("--bot-wav", str(wav), "--bot-chunk-ms", "100", "--bot-clear-after-ms", "50")
        got = self.bot_call(run, lambda marks: [marks[-1]])
        media = b"".join(base64.b64decode(m["media"]["payload"]) for m in got if m["event"] == "media")
        self.assertEqual(media, ulaw_bytes(samples), "the WAV, µ-law, in order")
        self.assertEqual([m["mark"]["name"] for m in got if m["event"] == "mark"], ["m1", "m2", "m3"])
        self.assertEqual(got[-1], {"event": "clear", "streamSid": SID["streamSid"]})
        report = run.report()
        self.assertViolations(report, [])
        bot = report["per_connection"][0]["bot"]
        self.assertEqual([m["name"] for m in bot["marks_echoed"]], ["m1", "m2", "m3"])
        self.assertEqual(bot["samples_sent"], 2000)
        self.assertIsNotNone(bot["cleared_ms"])

    def test_bot_mark_echoed_out_of_order_or_never_sent(self):
        tmp = tempfile.TemporaryDirectory(prefix="bot-wav-")
        self.addCleanup(tmp.cleanup)
        wav = Path(tmp.name) / "bot.wav"
        common.write_wav(wav, 8000, array.array("h", [0] * 1600))
        run = self.start("--bot-wav", str(wav))
        self.bot_call(run, lambda marks: ["m2", "m1", "zz"] if len(marks) == 2 else [])
        self.assertViolations(run.report(), [
            "conn 1: mark 'm2' answered where 'm1' was next (marks come back in the order sent, "
            'Twilio Media Streams "mark" message)',
            "conn 1: mark 'm1' answered where 'm2' was next (marks come back in the order sent, "
            'Twilio Media Streams "mark" message)',
            "conn 1: mark 'zz' that this server never sent (Twilio Media Streams \"mark\" message)"])


# --- AudioHook -------------------------------------------------------------------------------

DOC_HEADERS = {
    "host": "audiohook.example.com",
    "audiohook-organization-id": "d7934305-0972-4844-938e-9060eef73d05",
    "audiohook-session-id": "30b0e395-84d3-4570-ac13-9a62d8f514c0",
    "audiohook-correlation-id": "e160e428-53e2-487c-977d-96989bf5c99d",
    "x-api-key": "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh",
    "signature": "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:",
    "signature-input": (
        'sig1=("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" '
        '"audiohook-correlation-id" "x-api-key");keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";'
        'nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";alg="hmac-sha256";created=1641013200;expires=3282026430'),
}
DOC_SECRET = base64.b64decode("TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=")
DOC_TARGET = "/api/v1/voicebiometrics/ws"
SECRET_B64 = base64.b64encode(b"checker-test-client-secret-0123456789").decode()
API_KEY = "test-api-key"


def sign(headers: dict, target: str, authority: str, secret: bytes, created: int | None = None) -> dict:
    """Signs as an AudioHook client does, building the RFC 9421 base by hand."""
    names = ["@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id",
             "audiohook-correlation-id", "x-api-key"]
    created = int(time.time()) if created is None else created
    params = (f'("{names[0]}" "{names[1]}" "{names[2]}" "{names[3]}" "{names[4]}" "{names[5]}")'
              f';keyid="{headers["X-API-KEY"]}";nonce="{base64.b64encode(os.urandom(16)).decode()}"'
              f';alg="hmac-sha256";created={created};expires={created + 60}')
    lines = [f'"@request-target": {target}', f'"@authority": {authority}']
    lines += [f'"{n}": {headers[n.title() if n != "x-api-key" else "X-API-KEY"]}' for n in names[2:]]
    lines.append(f'"@signature-params": {params}')
    mac = hmac.new(secret, "\n".join(lines).encode(), hashlib.sha256).digest()
    return {"Signature-Input": f"sig1={params}", "Signature": f"sig1=:{base64.b64encode(mac).decode()}:"}


class AudioHookClient:
    """An AudioHook client's side of the session walkthrough, tracking seq and position."""

    def __init__(self, ws, session_id: str, org: str, channels=("external", "internal")):
        self.ws, self.id, self.org = ws, session_id, org
        self.seq = 0
        self.serverseq = 0
        self.samples = 0
        self.discarded = 0.0
        self.channels = list(channels)

    def position(self) -> str:
        return f"PT{self.samples / 8000 + self.discarded:g}S"

    async def send(self, kind: str, parameters: dict, **over) -> None:
        self.seq += 1
        msg = {"version": "2", "id": self.id, "type": kind, "seq": self.seq, "serverseq": self.serverseq,
               "position": self.position(), "parameters": parameters}
        msg.update(over)
        await self.ws.send(json.dumps(msg))

    async def receive(self) -> dict:
        msg = json.loads(await self.ws.recv())
        self.serverseq = msg["seq"]
        return msg

    async def open(self) -> dict:
        await self.send("open", {
            "organizationId": self.org, "conversationId": str(uuid.uuid4()),
            "participant": {"id": str(uuid.uuid4()), "ani": "+13175550123", "aniName": "John Doe", "dnis": "+18005550100"},
            "media": [{"type": "audio", "format": "PCMU", "channels": self.channels, "rate": 8000},
                      {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}],
            "language": "en-US", "customConfig": {"tenant": "t1"}})
        return await self.receive()

    async def audio(self, frames: int, data: bytes | None = None) -> None:
        per_frame = 160 * len(self.channels)
        for i in range(frames):
            chunk = data[i * per_frame:(i + 1) * per_frame] if data else bytes([0xFF]) * per_frame
            await self.ws.send(chunk)
            self.samples += len(chunk) // len(self.channels)

    async def close(self) -> dict:
        await self.send("close", {"reason": "end"})
        return await self.receive()


class AudioHookTest(CheckerCase):
    profile = "audiohook"

    def headers(self, run: Run, **drop) -> dict:
        h = {"Audiohook-Organization-Id": str(uuid.uuid4()), "Audiohook-Correlation-Id": str(uuid.uuid4()),
             "Audiohook-Session-Id": str(uuid.uuid4()), "X-API-KEY": API_KEY}
        for k in drop:
            h.pop(k.replace("_", "-"))
        return h

    def session(self, run: Run, body, headers: dict | None = None, path: str = "/audiohook", secret=None):
        h = headers or self.headers(run)
        if secret is not None:
            h.update(sign(h, path, f"127.0.0.1:{run.port}", secret))

        async def go():
            async with connect(run.url + path, additional_headers=h) as ws:
                client = AudioHookClient(ws, h.get("Audiohook-Session-Id", str(uuid.uuid4())),
                                         h.get("Audiohook-Organization-Id", str(uuid.uuid4())))
                return await body(client)
        return drive(go())

    def test_correct_session(self):
        run = self.start("--api-key", API_KEY, "--client-secret", SECRET_B64,
                         "--expect", "customConfig.tenant=t1", "--expect", "participant.ani=+13175550123")
        external, internal = ulaw_bytes(signal_8k(1600, 3)), ulaw_bytes(signal_8k(1600, 4))
        stereo = interleave(external, internal, width=1)

        async def body(c: AudioHookClient):
            opened = await c.open()
            self.assertEqual((opened["type"], opened["seq"], opened["clientseq"]), ("opened", 1, 1))
            self.assertEqual(opened["parameters"]["media"],
                             [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}])
            await c.audio(5, stereo[:1600])
            await c.send("ping", {"rtt": "PT0.025S"})
            pong = await c.receive()
            self.assertEqual((pong["type"], pong["clientseq"]), ("pong", c.seq))
            await c.send("paused", {})
            start = c.position()
            c.discarded += 0.5
            await c.send("resumed", {"start": start, "discarded": "PT0.5S"})
            await c.audio(5, stereo[1600:3200])
            await c.send("update", {"language": "de-DE"})
            closed = await c.close()
            self.assertEqual((closed["type"], closed["clientseq"]), ("closed", c.seq))
        self.session(run, body, secret=base64.b64decode(SECRET_B64))
        report = run.report()
        self.assertViolations(report, [])
        self.assertEqual(report["tracks"], {"external": {"samples": 1600, "rate": 8000},
                                            "internal": {"samples": 1600, "rate": 8000}})
        self.assertTrue(report["per_connection"][0]["signature"]["verified"])
        _, _, samples = common.read_wav(run.wav_dir / "c1-internal.wav")
        self.assertEqual(list(samples), [common.ULAW_TABLE[b] for b in internal])

    def expect_one(self, body, violation: str, *args: str, headers=None) -> None:
        run = self.start(*args)
        self.session(run, body, headers=headers(run) if headers else None)
        self.assertViolations(run.report(), [f"conn 1: {violation}"])

    def test_seq_skip(self):
        async def body(c):
            await c.open()
            c.seq += 1
            await c.send("ping", {})
            await c.receive()
            await c.close()
        self.expect_one(body, '"ping".seq went 1 -> 3 (client seq starts at 1 and increases by 1 per message, '
                              'AudioHook protocol "message": sequence numbers)')

    def test_position_not_audio_sent(self):
        async def body(c):
            await c.open()
            await c.audio(20)
            await c.send("ping", {}, position="PT0.5S")
            await c.receive()
            await c.close()
        self.expect_one(body, '"ping".position is 0.5 s but the client sent 3200 samples (0.4 s) and declared '
                              '0 s discarded, 0.4 s in all (AudioHook protocol "message" position: the audio '
                              'stream position)')

    def test_audio_before_opened(self):
        async def body(c):
            await c.ws.send(bytes(320))
            await c.open()
            await c.close()
        self.expect_one(body, 'binary audio frame before "opened" (AudioHook protocol "audio" frames: audio flows '
                              'only in an open, unpaused session)')

    def test_audio_while_paused(self):
        async def body(c):
            await c.open()
            await c.send("paused", {})
            await c.ws.send(bytes(320))
            await c.close()
        self.expect_one(body, 'binary audio frame while paused (after "paused") (AudioHook protocol "audio" '
                              'frames: audio flows only in an open, unpaused session)')

    def test_odd_stereo_frame(self):
        async def body(c):
            await c.open()
            await c.ws.send(bytes(321))
            await c.close()
        self.expect_one(body, 'audio frame of 321 bytes is not a whole number of 2-channel PCMU samples '
                              '(AudioHook protocol "audio" frames: interleaved, external first)')

    def test_serverseq_ahead(self):
        async def body(c):
            await c.open()
            await c.send("ping", {}, serverseq=7)
            await c.receive()
            await c.close()
        self.expect_one(body, '"ping".serverseq 7 is beyond the last seq the server sent, 1 '
                              '(AudioHook protocol "message": sequence numbers)')

    def test_id_differs_from_header(self):
        other = str(uuid.uuid4())

        async def body(c):
            c.id = other
            await c.open()
            await c.close()
        run = self.start()
        h = self.headers(run)
        self.session(run, body, headers=h)
        self.assertViolations(run.report(), [
            f'conn 1: "open".id {other} differs from the audiohook-session-id header {h["Audiohook-Session-Id"]} '
            '(AudioHook protocol "message")'])

    def test_missing_correlation_header(self):
        async def body(c):
            await c.open()
            await c.close()
        self.expect_one(body, 'upgrade has no audiohook-correlation-id header (AudioHook protocol '
                              '"connection establishment")',
                        headers=lambda run: self.headers(run, Audiohook_Correlation_Id=1))

    def test_close_without_transaction(self):
        async def body(c):
            await c.open()
            await c.audio(2)
        self.expect_one(body, 'client closed the WebSocket without a "close" transaction (AudioHook protocol '
                              '"close": the client closes the session with close/closed before disconnecting)')

    def test_message_after_close(self):
        async def body(c):
            await c.open()
            await c.close()
            await c.send("ping", {})
        self.expect_one(body, '"ping" after "close" (the close transaction ends the session, AudioHook protocol "close")')

    def test_bad_signature_rejected(self):
        run = self.start("--client-secret", SECRET_B64)
        with self.assertRaises(InvalidStatus) as e:
            self.session(run, None, secret=b"the wrong secret")
        self.assertEqual(e.exception.response.status_code, 401)
        self.assertViolations(run.report(), [
            "conn 1: upgrade signature: signature does not verify: HMAC-SHA256 of the signature base with the "
            "client secret differs (RFC 9421 §3.2, §3.3.3)"])

    def test_unsigned_when_secret_given(self):
        run = self.start("--client-secret", SECRET_B64)
        with self.assertRaises(InvalidStatus):
            self.session(run, None)
        self.assertViolations(run.report(), [
            "conn 1: upgrade signature: upgrade has no Signature-Input or Signature header, but --client-secret "
            "asks for a signed request (AudioHook authentication, RFC 9421 §4)"])

    def test_disconnect_then_close(self):
        run = self.start("--disconnect-after-ms", "100")

        async def body(c):
            await c.open()
            await c.audio(5)
            msg = await c.receive()
            self.assertEqual((msg["type"], msg["parameters"]["reason"]), ("disconnect", "completed"))
            await c.send("close", {"reason": "disconnect"})
            self.assertEqual((await c.receive())["type"], "closed")
        self.session(run, body)
        report = run.report()
        self.assertViolations(report, [])
        self.assertEqual(report["messages"]["sent:disconnect"], 1)

    def test_doc_signature_example(self):
        """The AudioHook documentation's signing example, verified at its own time."""
        lookup = lambda name: [DOC_HEADERS[name]] if name in DOC_HEADERS else []  # noqa: E731
        problems, info = httpsig.verify(lookup, DOC_TARGET, DOC_SECRET, 1641013205, 10)
        self.assertEqual(problems, [])
        tampered = dict(DOC_HEADERS, **{"audiohook-session-id": str(uuid.uuid4())})
        problems, _ = httpsig.verify(lambda n: [tampered[n]] if n in tampered else [], DOC_TARGET,
                                     DOC_SECRET, 1641013205, 10)
        self.assertEqual(problems, ["signature does not verify: HMAC-SHA256 of the signature base with the client "
                                    "secret differs (RFC 9421 §3.2, §3.3.3)"])
        problems, _ = httpsig.verify(lookup, DOC_TARGET, DOC_SECRET, 1641013200 + 60, 10)
        self.assertEqual(problems, ["created=1641013200 is 60 s old, more than --max-signature-age-s 10 (RFC 9421 §3.2)"])

    def test_rfc9421_hmac_example(self):
        """RFC 9421 appendix B.2.5 (HMAC-SHA256 with the B.1.5 shared secret)."""
        key = base64.b64decode("uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjl"
                               "TMtDQ==")
        headers = {"date": "Tue, 20 Apr 2021 02:07:55 GMT", "host": "example.com", "content-type": "application/json"}
        inputs = httpsig.parse_dictionary(
            'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"')
        components, params = inputs["sig-b25"]
        base, problems = httpsig.signature_base(lambda n: [headers[n]] if n in headers else [], "/foo",
                                                components, params)
        self.assertEqual(problems, [])
        mac = hmac.new(key, base.encode(), hashlib.sha256).digest()
        self.assertEqual(base64.b64encode(mac).decode(), "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=")

    def test_structured_fields(self):
        d = httpsig.parse_dictionary('a=(1 "x\\"y" tok :AAE=: ?0);p=1.5, b, c=?1;q')
        self.assertEqual(d["a"][0], [(1, []), ('x"y', []), ("tok", []), (b"\x00\x01", []), (False, [])])
        self.assertEqual(httpsig.serialize_inner_list(*d["a"]), '(1 "x\\"y" tok :AAE=: ?0);p=1.5')
        self.assertEqual(d["b"], (True, []))
        self.assertEqual(d["c"], (True, [("q", True)]))
        for bad in ("a=(1", "a=1,", 'a="\x01"', "A=1", "a=:@@:"):
            with self.assertRaises(httpsig.SfvError, msg=bad):
                httpsig.parse_dictionary(bad)


# --- jambonz ------------------------------------------------------------------------------------


def metadata(**over) -> dict:
    m = {"callSid": str(uuid.uuid4()), "direction": "inbound", "from": "+15083084809", "to": "+15083728299",
         "callId": "abc@10.0.0.1", "sampleRate": 16000, "mixType": "stereo", "tenant": "t1"}
    m.update(over)
    return m


class JambonzTest(CheckerCase):
    profile = "jambonz"

    def stream(self, run: Run, frames: list, subprotocols=("audio.jambonz.org",), **kw):
        return drive(send_all(run.url + "/listen", frames, subprotocols=list(subprotocols) or None, **kw))

    def test_correct_stereo_16k(self):
        run = self.start("--expect-token", "user:pw", "--expect", "tenant=t1", "--expect", "sampleRate=16000")
        caller, callee = signal_8k(3200, 5), signal_8k(3200, 6)
        pcm = interleave(l16_bytes(caller), l16_bytes(callee), width=2)
        frames = [json.dumps(metadata())] + [pcm[i:i + 1280] for i in range(0, len(pcm), 1280)]
        auth = "Basic " + base64.b64encode(b"user:pw").decode()
        self.assertEqual(self.stream(run, frames, additional_headers={"Authorization": auth}), "audio.jambonz.org")
        report = run.report()
        self.assertViolations(report, [])
        self.assertEqual(report["tracks"], {"caller": {"samples": 3200, "rate": 16000},
                                            "callee": {"samples": 3200, "rate": 16000}})
        self.assertEqual(report["upgrade"]["headers"]["sec-websocket-protocol"], "audio.jambonz.org")
        rate, _, samples = common.read_wav(run.wav_dir / "c1-callee.wav")
        self.assertEqual((rate, list(samples)), (16000, callee))

    def expect_one(self, frames: list, violation: str, *args: str, **kw) -> None:
        run = self.start(*args)
        self.stream(run, frames, **kw)
        self.assertViolations(run.report(), [f"conn 1: {violation}"])

    def test_no_subprotocol(self):
        self.expect_one([json.dumps(metadata()), bytes(640)],
                        "upgrade does not offer subprotocol audio.jambonz.org (offered []; the server accepts "
                        "connections with subprotocol audio.jambonz.org, jambonz listen verb)", subprotocols=())

    def test_binary_before_metadata(self):
        self.expect_one([bytes(640), json.dumps(metadata())],
                        "binary frame before the metadata text frame (jambonz listen verb: the JSON text frame comes first)")

    def test_partial_stereo_sample(self):
        self.expect_one([json.dumps(metadata()), bytes(642)],
                        "binary frame of 642 bytes is not a whole number of 2-channel 16-bit samples (4 bytes each, "
                        "jambonz listen verb: 16-bit PCM, stereo interleaved)")

    def test_bad_mix_type(self):
        self.expect_one([json.dumps(metadata(mixType="quad"))],
                        "metadata.mixType is 'quad', must be \"mono\", \"stereo\" or \"mixed\" (jambonz listen verb mixType)")

    def test_bad_sample_rate(self):
        self.expect_one([json.dumps(metadata(sampleRate="8000"))],
                        "metadata.sampleRate is '8000', must be one of (8000, 16000, 24000, 48000, 64000) "
                        "(jambonz listen verb sampleRate)")

    def test_text_after_metadata(self):
        self.expect_one([json.dumps(metadata(mixType="mono")), bytes(320), json.dumps({"event": "dtmf", "dtmf": "1"})],
                        "text frame after the metadata frame: '{\"event\": \"dtmf\", \"dtmf\": \"1\"}' (after the initial "
                        "text frame only binary audio frames follow, jambonz listen verb; --allow-dtmf accepts event dtmf)")

    def test_dtmf_allowed(self):
        run = self.start("--allow-dtmf")
        self.stream(run, [json.dumps(metadata(mixType="mixed", sampleRate=8000)), bytes(320),
                          json.dumps({"event": "dtmf", "dtmf": "1", "duration": "1600"})])
        report = run.report()
        self.assertViolations(report, [])
        self.assertEqual(report["tracks"], {"mixed": {"samples": 160, "rate": 8000}})

    def bot_listen(self, run: Run, answer) -> list:
        """Plays jambonz: metadata at 8 kHz mono, then reads what the bot sends for a while and
        answers through `answer(message) -> list of JSON replies`."""
        async def call():
            got = []
            async with connect(run.url + "/listen", subprotocols=["audio.jambonz.org"]) as ws:
                await ws.send(json.dumps(metadata(mixType="mono", sampleRate=8000)))
                try:
                    while True:
                        m = await asyncio.wait_for(ws.recv(), 1.0)
                        got.append(m)
                        if isinstance(m, str):
                            for reply in answer(json.loads(m)):
                                await ws.send(json.dumps(reply))
                except asyncio.TimeoutError:
                    pass
            return got
        return drive(call())

    def bot_wav(self, samples: list[int]) -> str:
        tmp = tempfile.TemporaryDirectory(prefix="bot-wav-")
        self.addCleanup(tmp.cleanup)
        wav = Path(tmp.name) / "bot.wav"
        common.write_wav(wav, 8000, array.array("h", samples))
        return str(wav)

    def test_bot_streams_l16_with_marks_and_takes_playout_answers(self):
        samples = signal_8k(1200, 4)
        run = self.start("--bot-wav", self.bot_wav(samples), "--bot-chunk-ms", "100",
                         "--bot-kill-after-ms", "50")
        got = self.bot_listen(run, lambda m: [{"type": "mark", "data": {"name": m["data"]["name"],
                                                                       "event": "playout"}}]
                              if m.get("type") == "mark" else [])
        audio = b"".join(m for m in got if isinstance(m, bytes))
        self.assertEqual(audio, l16_bytes(samples))
        marks = [json.loads(m)["data"]["name"] for m in got if isinstance(m, str) and "mark" in m]
        self.assertEqual(marks, ["m1", "m2"])
        self.assertEqual(json.loads(got[-1]), {"type": "killAudio"})
        report = run.report()
        self.assertViolations(report, [])
        bot = report["per_connection"][0]["bot"]
        self.assertEqual([m["name"] for m in bot["marks_echoed"]], ["m1", "m2"])

    def test_bot_plays_a_clip_and_playdone_must_answer_one(self):
        samples = signal_8k(400, 5)
        run = self.start("--bot-wav", self.bot_wav(samples), "--bot-mode", "play")
        got = self.bot_listen(run, lambda m: [{"type": "playDone"}, {"type": "playDone"}]
                              if m.get("type") == "playAudio" else [])
        clip = json.loads(got[0])
        self.assertEqual((clip["data"]["audioContentType"], clip["data"]["sampleRate"]), ("raw", "8000"))
        self.assertEqual(base64.b64decode(clip["data"]["audioContent"]), l16_bytes(samples))
        self.assertViolations(run.report(), [
            "conn 1: playDone without a playAudio clip to answer (jambonz listen verb bidirectional audio)"])

    def test_wrong_basic_auth(self):
        run = self.start("--expect-token", "user:pw")
        with self.assertRaises(InvalidStatus) as e:
            self.stream(run, [], additional_headers={"Authorization": "Basic " + base64.b64encode(b"user:no").decode()})
        self.assertEqual(e.exception.response.status_code, 401)
        self.assertViolations(run.report(), [
            'conn 1: upgrade Authorization "Basic dXNlcjpubw==" is not "Basic <expected token>" (--auth-scheme basic)'])

    def test_expectation(self):
        self.expect_one([json.dumps(metadata())], "metadata.tenant is 't1', expected 't2' (--expect)",
                        "--expect", "tenant=t2")


# --- raw ------------------------------------------------------------------------------------------


class RawTest(CheckerCase):
    profile = "raw"

    def stream(self, run: Run, frames: list, path="/v1/listen", token="tok", scheme="Token"):
        headers = {"Authorization": f"{scheme} {token}"} if token else {}
        return drive(send_all(run.url + path, frames, additional_headers=headers))

    def check_format(self, fmt: str, rate: int, channels: int, encode, width: int):
        run = self.start("--format", fmt, "--rate", str(rate), "--channels", str(channels), "--expect-token", "tok",
                         "--require-query", "encoding=" + fmt, "--require-query", "sample_rate=")
        chans = [signal_8k(rate // 10, 10 + c) for c in range(channels)]
        data = interleave(*[encode(ch) for ch in chans], width=width)
        step = width * channels * rate // 50
        self.stream(run, [data[i:i + step] for i in range(0, len(data), step)],
                    path=f"/v1/listen?encoding={fmt}&sample_rate={rate}")
        report = run.report()
        self.assertViolations(report, [])
        names = ["mono"] if channels == 1 else ["caller", "callee"]
        self.assertEqual(report["tracks"], {n: {"samples": rate // 10, "rate": rate} for n in names})
        table = {"ulaw": common.ULAW_TABLE, "alaw": common.ALAW_TABLE}.get(fmt)
        for name, ch in zip(names, chans):
            _, _, samples = common.read_wav(run.wav_dir / f"c1-{name}.wav")
            want = ch if table is None else [table[b] for b in encode(ch)]
            self.assertEqual(list(samples), want, name)

    def test_ulaw_8k_mono(self):
        self.check_format("ulaw", 8000, 1, ulaw_bytes, 1)

    def test_alaw_8k_stereo(self):
        self.check_format("alaw", 8000, 2, alaw_bytes, 1)

    def test_l16_16k_stereo(self):
        self.check_format("l16", 16000, 2, l16_bytes, 2)

    def test_text_frame(self):
        run = self.start("--format", "ulaw", "--rate", "8000", "--channels", "1", "--allow-text-type", "KeepAlive")
        self.stream(run, [bytes(160), json.dumps({"type": "KeepAlive"}), json.dumps({"type": "CloseStream"})])
        self.assertViolations(run.report(), [
            "conn 1: text frame '{\"type\": \"CloseStream\"}' (raw audio profile: binary audio only; "
            "--allow-text-type TYPE accepts JSON objects of that type)"])

    def test_partial_sample(self):
        run = self.start("--format", "l16", "--rate", "16000", "--channels", "2")
        self.stream(run, [bytes(640), bytes(6)])
        self.assertViolations(run.report(), [
            "conn 1: binary frame of 6 bytes is not a whole number of 2-channel l16 samples (4 bytes each, raw audio "
            "profile: --format l16 --channels 2)"])

    def test_bearer_when_token_expected(self):
        run = self.start("--format", "ulaw", "--rate", "8000", "--channels", "1", "--expect-token", "tok")
        with self.assertRaises(InvalidStatus) as e:
            self.stream(run, [], scheme="Bearer")
        self.assertEqual(e.exception.response.status_code, 401)
        self.assertViolations(run.report(), [
            'conn 1: upgrade Authorization "Bearer tok" is not "Token <expected token>" (--auth-scheme token)'])

    def test_missing_query(self):
        run = self.start("--format", "ulaw", "--rate", "8000", "--channels", "1", "--require-query", "channels=1")
        self.stream(run, [bytes(160)])
        self.assertViolations(run.report(), [
            "conn 1: upgrade URL has no channels query parameter (--require-query channels=1)"])


# --- common: bounds, signals, G.711 -----------------------------------------------------------------


class CommonTest(CheckerCase):
    profile = "raw"
    fmt = ("--format", "ulaw", "--rate", "8000", "--channels", "1")

    def test_max_message_bytes(self):
        run = self.start(*self.fmt, "--max-message-bytes", "1000")

        async def go():
            async with connect(run.url) as ws:
                await ws.send(bytes(1001))
                await ws.wait_closed()
                return ws.close_code
        self.assertEqual(drive(go()), 1009)
        self.assertViolations(run.report(), [
            "conn 1: a message exceeded --max-message-bytes 1000 (checker bound)"])

    def test_max_connections(self):
        run = self.start(*self.fmt, "--max-connections", "1", exit_after=2)
        drive(send_all(run.url, [bytes(160)]))
        with self.assertRaises(InvalidStatus) as e:
            drive(send_all(run.url, []))
        self.assertEqual(e.exception.response.status_code, 503)
        self.assertViolations(run.report(), ["conn 2: more than --max-connections 1 upgrades (checker bound)"])

    def test_sigterm_writes_report(self):
        run = self.start(*self.fmt, exit_after=None)

        async def go():
            async with connect(run.url) as ws:
                await ws.send(bytes(800))
                # The pong comes back once the checker has read the frame before it.
                await (await ws.ping())
                run.proc.send_signal(signal.SIGTERM)
                await ws.wait_closed()
                return ws.close_code
        self.assertEqual(drive(go()), 1001)
        report = run.report()
        self.assertViolations(report, [])
        self.assertEqual((report["stopped_by"], report["tracks"]["mono"]["samples"]), ("SIGTERM", 800))

    def test_g711_tables(self):
        # Reference points of ITU-T G.711 (µ-law scaled by 4, A-law by 8).
        self.assertEqual([common.ULAW_TABLE[c] for c in (0xFF, 0x7F, 0x80, 0x00, 0xEF, 0x6F)],
                         [0, 0, 32124, -32124, 4 * 33, -4 * 33])
        self.assertEqual([common.ALAW_TABLE[c] for c in (0xD5, 0x55, 0xAA, 0x2A)], [8, -8, 32256, -32256])
        for c in range(256):
            self.assertEqual(common.alaw_encode(common.ALAW_TABLE[c]), c)
            if c != 0x7F:  # µ-law has two codes for zero; the encoder emits 0xFF
                self.assertEqual(common.ulaw_encode(common.ULAW_TABLE[c]), c)
        table = sorted(set(common.ULAW_TABLE))
        self.assertEqual(len(table), 255)
        for v in range(-32768, 32768, 7):  # the encoder picks the nearest-below decision level
            self.assertLessEqual(abs(common.ULAW_TABLE[common.ulaw_encode(v)] - v), 1100)


# --- compare.py ---------------------------------------------------------------------------------------


class CompareTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory(prefix="compare-")
        self.addCleanup(self.dir.cleanup)

    def wav(self, name: str, rate: int, samples) -> str:
        path = Path(self.dir.name) / name
        common.write_wav(path, rate, array.array("h", [max(-32768, min(32767, int(s))) for s in samples]))
        return str(path)

    def compare(self, *args: str) -> tuple[int, str]:
        p = subprocess.run([sys.executable, str(HERE / "compare.py"), *args], capture_output=True, text=True,
                           timeout=60)
        return p.returncode, p.stdout + p.stderr

    def test_exact_after_offset(self):
        source = signal_8k(80000, 7)  # 10 s
        decoded = [common.ULAW_TABLE[common.ulaw_encode(s)] for s in source[1234:70000]]
        src, dec = self.wav("src.wav", 8000, source), self.wav("dec.wav", 8000, decoded)
        code, out = self.compare(dec, src, "--quantize", "ulaw")
        self.assertEqual(code, 0, out)
        self.assertIn("exact match: 68766 samples equal at lag 1234", out)
        decoded[5000] += 4
        code, out = self.compare(self.wav("dec2.wav", 8000, decoded), src, "--quantize", "ulaw")
        self.assertEqual(code, 1, out)
        self.assertIn("has 1 of 68766 overlapping samples different, first at decoded sample 5000", out)

    def test_correlation_resampled(self):
        def tone(rate: int, n: int) -> list[float]:
            # A chirp (200 Hz rising by 300 Hz/s) plus a tone: band-limited and never periodic.
            return [9000 * math.sin(2 * math.pi * (200 * i / rate + 150 * (i / rate) ** 2))
                    + 4000 * math.sin(2 * math.pi * 1700 * i / rate) for i in range(n)]
        src = self.wav("src8k.wav", 8000, tone(8000, 16000))
        dec = self.wav("dec16k.wav", 16000, tone(16000, 32000)[800:30000])
        code, out = self.compare(dec, src, "--mode", "corr")
        self.assertEqual(code, 0, out)
        self.assertIn("best lag 800 samples", out)
        code, out = self.compare(self.wav("noise.wav", 16000, signal_8k(29200, 9)), src, "--mode", "corr")
        self.assertEqual(code, 1, out)
        self.assertIn("below --threshold 0.99", out)

    def test_exact_needs_equal_rates(self):
        src = self.wav("a.wav", 8000, signal_8k(800))
        dec = self.wav("b.wav", 16000, signal_8k(1600))
        self.assertEqual(self.compare(dec, src)[0], 1)
        self.assertEqual(self.compare(str(Path(self.dir.name) / "missing.wav"), src)[0], 2)


if __name__ == "__main__":
    unittest.main()
