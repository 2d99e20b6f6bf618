"""HTTP Message Signatures (RFC 9421) as profiled by Genesys AudioHook, over the Structured
Field Values of RFC 8941 that carry them.

AudioHook profile (developer.genesys.cloud, AudioHook protocol "Authentication"; Genesys'
reference implementation github.com/purecloudlabs/audiohook-reference-implementation):
one signature, algorithm hmac-sha256 keyed with the base64-decoded client secret, keyid equal
to the X-API-KEY header, a nonce, a created time, and covering @request-target, @authority,
audiohook-organization-id, audiohook-session-id, audiohook-correlation-id and x-api-key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from decimal import Decimal
from typing import Any, Callable

REQUIRED_COMPONENTS = (
    "@request-target",
    "@authority",
    "audiohook-organization-id",
    "audiohook-session-id",
    "audiohook-correlation-id",
    "x-api-key",
)
# RFC 9421 §2.3 signature parameters (tag is in the final RFC, not in the AudioHook profile).
SIGNATURE_PARAMS = {"alg": str, "created": int, "expires": int, "keyid": str, "nonce": str, "tag": str}
# Allowed difference between the client's and this checker's clock, in seconds.
CLOCK_SKEW_S = 3.0


class Token(str):
    """An RFC 8941 Token (serialised bare, unlike a String)."""


class SfvError(ValueError):
    pass


# --- RFC 8941 parsing (§4.2) ------------------------------------------------------------------

_KEY_FIRST = re.compile(r"[a-z*]")
_KEY_REST = re.compile(r"[a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


class _Parser:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.i += 1

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise SfvError(f"expected {ch!r} at offset {self.i} of {self.s!r}")
        self.i += 1

    def key(self) -> str:
        if not _KEY_FIRST.match(self.peek()):
            raise SfvError(f"bad key at offset {self.i} of {self.s!r}")
        m = _KEY_REST.match(self.s, self.i + 1)
        assert m is not None
        key = self.s[self.i : m.end()]
        self.i = m.end()
        return key

    def bare_item(self) -> Any:
        c = self.peek()
        if c == "-" or c.isdigit():
            m = _NUMBER.match(self.s, self.i)
            if not m:
                raise SfvError(f"bad number at offset {self.i} of {self.s!r}")
            self.i = m.end()
            text = m.group(0)
            if m.group(1):
                if len(text.lstrip("-").split(".")[0]) > 12 or len(m.group(1)) > 4:
                    raise SfvError(f"decimal {text} out of range")
                return Decimal(text)
            if len(text.lstrip("-")) > 15:
                raise SfvError(f"integer {text} out of range")
            return int(text)
        if c == '"':
            self.i += 1
            out = []
            while True:
                ch = self.peek()
                if not ch:
                    raise SfvError(f"unterminated string in {self.s!r}")
                self.i += 1
                if ch == "\\":
                    nxt = self.peek()
                    if nxt not in ('"', "\\"):
                        raise SfvError(f"bad escape in {self.s!r}")
                    out.append(nxt)
                    self.i += 1
                elif ch == '"':
                    return "".join(out)
                elif not (0x20 <= ord(ch) <= 0x7E):
                    raise SfvError(f"non-printable character in string in {self.s!r}")
                else:
                    out.append(ch)
        if c == ":":
            end = self.s.find(":", self.i + 1)
            if end < 0:
                raise SfvError(f"unterminated byte sequence in {self.s!r}")
            body = self.s[self.i + 1 : end]
            self.i = end + 1
            try:
                return base64.b64decode(body, validate=True)
            except (binascii.Error, ValueError) as e:
                raise SfvError(f"bad base64 in byte sequence: {e}") from e
        if c == "?":
            self.i += 1
            v = self.peek()
            if v not in ("0", "1"):
                raise SfvError(f"bad boolean in {self.s!r}")
            self.i += 1
            return v == "1"
        m = _TOKEN.match(self.s, self.i)
        if m:
            self.i = m.end()
            return Token(m.group(0))
        raise SfvError(f"unexpected {c!r} at offset {self.i} of {self.s!r}")

    def params(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            k = self.key()
            v: Any = True
            if self.peek() == "=":
                self.i += 1
                v = self.bare_item()
            out = [(ok, ov) for ok, ov in out if ok != k] + [(k, v)]
        return out

    def item_or_inner_list(self) -> tuple[Any, list[tuple[str, Any]]]:
        if self.peek() != "(":
            return self.bare_item(), self.params()
        self.i += 1
        items = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                return items, self.params()
            items.append((self.bare_item(), self.params()))
            if self.peek() not in (" ", ")"):
                raise SfvError(f"bad inner list in {self.s!r}")


def parse_dictionary(text: str) -> dict[str, tuple[Any, list[tuple[str, Any]]]]:
    """RFC 8941 §4.2.2: {key: (bare item | [(item, params)...], params)} in order."""
    p = _Parser(text)
    p.skip(" ")
    out: dict[str, tuple[Any, list[tuple[str, Any]]]] = {}
    while p.peek():
        k = p.key()
        if p.peek() == "=":
            p.i += 1
            out[k] = p.item_or_inner_list()
        else:
            out[k] = (True, p.params())
        p.skip(" \t")
        if not p.peek():
            break
        p.expect(",")
        p.skip(" \t")
        if not p.peek():
            raise SfvError(f"trailing comma in {text!r}")
    return out


# --- RFC 8941 serialisation (§4.1) -------------------------------------------------------------


def serialize_bare(v: Any) -> str:
    if isinstance(v, bool):
        return "?1" if v else "?0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Decimal):
        text = format(v.quantize(Decimal("0.001")).normalize(), "f")
        return text if "." in text else text + ".0"
    if isinstance(v, Token):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bytes):
        return ":" + base64.b64encode(v).decode() + ":"
    raise SfvError(f"cannot serialise {v!r}")


def serialize_params(params: list[tuple[str, Any]]) -> str:
    return "".join(f";{k}" if v is True else f";{k}={serialize_bare(v)}" for k, v in params)


def serialize_inner_list(items: list[tuple[Any, list]], params: list[tuple[str, Any]]) -> str:
    inner = " ".join(serialize_bare(v) + serialize_params(p) for v, p in items)
    return f"({inner}){serialize_params(params)}"


# --- RFC 9421 verification, AudioHook profile ---------------------------------------------------


def canonical_field(values: list[str]) -> str:
    """RFC 9421 §2.1: trim each field line, join lines with ", ", fold obs-fold to a space."""
    return ", ".join(re.sub(r"[ \t]*\r\n[ \t]+", " ", v.strip()) for v in values)


def signature_base(
    header: Callable[[str], list[str]],
    request_target: str,
    components: list[tuple[Any, list]],
    params: list[tuple[str, Any]],
) -> tuple[str, list[str]]:
    """RFC 9421 §2.5 signature base over the covered components (those this profile knows:
    @request-target, @authority and header fields), and the problems met building it."""
    problems = []
    lines = []
    for name, _ in components:
        if name == "@request-target":
            value = request_target
        elif name == "@authority":
            value = canonical_field(header("host")).lower()
        elif name.startswith("@"):
            problems.append(f"derived component {name!r} is not one the AudioHook profile signs "
                            "(AudioHook authentication)")
            continue
        else:
            got = header(name)
            if not got:
                problems.append(f"signed header {name!r} is absent from the request (RFC 9421 §2.1)")
                continue
            value = canonical_field(got)
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {serialize_inner_list(components, params)}')
    return "\n".join(lines), problems


def verify(
    header: Callable[[str], list[str]],
    request_target: str,
    secret: bytes,
    now: float,
    max_age_s: float,
) -> tuple[list[str], dict[str, Any]]:
    """Checks the request's Signature-Input/Signature. Returns (problems, info); no problems
    means the signature verified. `header(name)` gives all field lines of a header."""
    problems: list[str] = []
    info: dict[str, Any] = {}
    ref9421 = "RFC 9421"
    ref_ah = "AudioHook authentication"
    sig_input_lines, sig_lines = header("signature-input"), header("signature")
    if not sig_input_lines or not sig_lines:
        missing = [n for n, v in (("Signature-Input", sig_input_lines), ("Signature", sig_lines)) if not v]
        return [f"upgrade has no {' or '.join(missing)} header, but --client-secret asks for a "
                f"signed request ({ref_ah}, {ref9421} §4)"], info
    try:
        inputs = parse_dictionary(canonical_field(sig_input_lines))
        sigs = parse_dictionary(canonical_field(sig_lines))
    except SfvError as e:
        return [f"Signature-Input/Signature is not an RFC 8941 dictionary: {e} ({ref9421} §4.1, §4.2)"], info
    if not inputs:
        return [f"Signature-Input has no signature ({ref9421} §4.1)"], info
    label = next(iter(inputs))
    info["label"] = label
    components, params = inputs[label]
    if not isinstance(components, list):
        return [f"Signature-Input {label} is not an inner list ({ref9421} §4.1)"], info
    if label not in sigs or not isinstance(sigs[label][0], bytes):
        return [f"Signature has no byte sequence labelled {label} ({ref9421} §4.2)"], info
    signature = sigs[label][0]

    names: list[str] = []
    for value, cparams in components:
        if not isinstance(value, str) or isinstance(value, Token):
            return [f"Signature-Input {label} component {value!r} is not a string ({ref9421} §2)"], info
        if cparams:
            problems.append(f"component {value!r} has parameters {serialize_params(cparams)}, "
                            f"which the AudioHook profile does not use ({ref_ah})")
        if value in names:
            problems.append(f"component {value!r} is listed twice ({ref9421} §2)")
        names.append(value)
    info["components"] = names
    missing = [c for c in REQUIRED_COMPONENTS if c not in names]
    if missing:
        problems.append(f"signature does not cover {', '.join(missing)} ({ref_ah})")

    p: dict[str, Any] = {}
    for k, v in params:
        kind = SIGNATURE_PARAMS.get(k)
        if kind is None:
            problems.append(f"unknown signature parameter {k!r} ({ref9421} §2.3)")
        elif not isinstance(v, kind) or isinstance(v, bool) or (kind is str and isinstance(v, Token)):
            problems.append(f"signature parameter {k}={serialize_bare(v)} is not a{'n Integer' if kind is int else ' String'} ({ref9421} §2.3)")
        else:
            p[k] = v
    info["params"] = {k: v for k, v in p.items()}
    api_key = canonical_field(header("x-api-key"))
    if p.get("keyid") != api_key:
        problems.append(f"keyid {p.get('keyid')!r} is not the X-API-KEY header {api_key!r} ({ref_ah})")
    if p.get("alg", "hmac-sha256") != "hmac-sha256":
        problems.append(f"alg {p.get('alg')!r} is not hmac-sha256 ({ref_ah}, {ref9421} §3.3.3)")
    if not p.get("nonce"):
        problems.append(f"signature has no nonce parameter ({ref_ah})")
    created = p.get("created")
    if created is None:
        problems.append(f"signature has no created parameter ({ref_ah}, {ref9421} §2.3)")
    else:
        if created > now + CLOCK_SKEW_S:
            problems.append(f"created={created} is {created - now:.0f} s in the future ({ref9421} §3.2)")
        elif created + max_age_s < now - CLOCK_SKEW_S:
            problems.append(f"created={created} is {now - created:.0f} s old, more than "
                            f"--max-signature-age-s {max_age_s:g} ({ref9421} §3.2)")
    expires = p.get("expires")
    if expires is not None and expires < now - CLOCK_SKEW_S:
        problems.append(f"expires={expires} has passed ({ref9421} §2.3, §3.2)")

    base, missing_fields = signature_base(header, request_target, components, params)
    problems.extend(missing_fields)
    info["signature_base"] = base
    expected = hmac.new(secret, base.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        problems.append(f"signature does not verify: HMAC-SHA256 of the signature base with the client "
                        f"secret differs ({ref9421} §3.2, §3.3.3)")
    return problems, info
