"""The gRPC-web wire format: content types, frames, trailers, grpc-timeout, and refusals."""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass

import grpc

from mesh.errors import DomainError

#: The length of a frame's header: one flag byte, then the payload's length (big-endian).
HEADER_BYTES = 5
_TRAILER_FLAG = 0x80
_COMPRESSED_FLAG = 0x01
_GRPC_WEB = "application/grpc-web"
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
#: The longest deadline the edge passes on, in seconds (a day). The spec's 8 digits allow up to
#: 99999999H, about 11,000 years, which overflows gRPC core's deadline arithmetic: the call
#: failed DEADLINE_EXCEEDED at once. Longer asks get this instead.
MAX_TIMEOUT_S = 86400.0
# Text clients may encode each frame on its own, padding included: a chunk ends at its padding.
_BASE64_CHUNK = re.compile(rb"[^=]*=*")


class Refused(DomainError):
    """A call the edge answers itself, with ``code``; nothing reached a service."""

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class Codec:
    """How one call's messages travel: binary or base64 text, protobuf or JSON payloads."""

    #: The request's media type, answered back as the response's.
    content_type: str
    #: Whether the body is base64 (``application/grpc-web-text``).
    text: bool
    #: Whether each message is proto3 JSON instead of the binary encoding.
    json: bool

    def encode(self, chunk: bytes) -> bytes:
        """``chunk`` as it goes on the wire (text bodies base64 each chunk on its own)."""
        return base64.b64encode(chunk) if self.text else chunk


#: The codec of an answer to a request whose content type is not gRPC-web.
BINARY = Codec(_GRPC_WEB + "+proto", text=False, json=False)


def codec_for(content_type: str) -> Codec:
    """The codec a ``content-type`` asks for; UNIMPLEMENTED for anything but gRPC-web with the
    proto or JSON codec."""
    media = content_type.partition(";")[0].strip().lower()
    base, plus, name = media.partition("+")
    if base not in (_GRPC_WEB, _GRPC_WEB + "-text"):
        raise Refused(
            grpc.StatusCode.UNIMPLEMENTED,
            f"content type {clean(media) or '(none)'!r} is not gRPC-web: send application/"
            "grpc-web, application/grpc-web+proto, application/grpc-web+json or their -text forms",
            reason="UNSUPPORTED_CONTENT_TYPE",
        )
    if plus and name not in ("proto", "json"):
        raise Refused(
            grpc.StatusCode.UNIMPLEMENTED,
            f"the edge speaks the proto and json codecs, not {clean(name)!r}",
            reason="UNSUPPORTED_CODEC",
        )
    return Codec(media, text=base.endswith("-text"), json=name == "json")


def clean(text: str, limit: int = 100) -> str:
    """``text`` cut short and with anything unprintable replaced, for quoting in a message."""
    printable = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return printable + ("..." if len(text) > limit else "")


def frame(payload: bytes, flag: int = 0) -> bytes:
    """One gRPC-web frame."""
    return struct.pack(">BI", flag, len(payload)) + payload


def trailer(code: grpc.StatusCode, message: str, details: bytes | None = None) -> bytes:
    """The trailer frame that ends every answer: status, message and rich details."""
    lines = [f"grpc-status:{code.value[0]}", f"grpc-message:{percent(message)}"]
    if details:
        lines.append("grpc-status-details-bin:" + base64.b64encode(details).decode().rstrip("="))
    return frame(("\r\n".join(lines) + "\r\n").encode(), _TRAILER_FLAG)


def percent(text: str) -> str:
    """``text`` percent-encoded as grpc-message is (the gRPC HTTP/2 spec): UTF-8 bytes outside
    printable ASCII, and ``%`` itself, as ``%XX``."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x25 else f"%{b:02X}" for b in text.encode())


def parse_timeout(value: str | None) -> float | None:
    """The seconds a ``grpc-timeout`` header allows (at most ``MAX_TIMEOUT_S``), or None without
    one; INVALID_ARGUMENT unless it is 1 to 8 digits and a unit, as the gRPC spec writes it."""
    if value is None:
        return None
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"grpc-timeout {clean(value)!r} is not 1 to 8 digits followed by a unit"
            " (H, M, S, m, u or n)",
            reason="BAD_TIMEOUT",
        )
    return min(int(match[1]) * _TIMEOUT_UNITS[match[2]], MAX_TIMEOUT_S)


def body_limit(max_message_bytes: int, codec: Codec) -> int:
    """The most body bytes a request with one message of ``max_message_bytes`` can take."""
    framed = HEADER_BYTES + max_message_bytes
    return 4 * -(-framed // 3) if codec.text else framed


def unbase64(body: bytes) -> bytes:
    """The bytes of a text body: base64, whole or one padded chunk per frame."""
    try:
        return b"".join(
            base64.b64decode(chunk + b"=" * (-len(chunk) % 4), validate=True)
            for chunk in _BASE64_CHUNK.findall(body)
            if chunk
        )
    except binascii.Error:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the body of an application/grpc-web-text request is not base64",
            reason="BAD_FRAMING",
        ) from None


def only_message(body: bytes, max_message_bytes: int) -> bytes:
    """The one message a unary or server-streaming request holds; the refusal says what is
    wrong with any other body."""

    def bad(message: str) -> Refused:
        return Refused(grpc.StatusCode.INVALID_ARGUMENT, message, reason="BAD_FRAMING")

    if len(body) < HEADER_BYTES:
        raise bad(
            f"the body holds no gRPC-web frame: {len(body)} bytes, where a frame's header"
            f" alone is {HEADER_BYTES}"
        )
    flag, length = struct.unpack_from(">BI", body)
    if flag & _TRAILER_FLAG:
        raise bad("a request carries messages only, not a trailer frame")
    if flag & _COMPRESSED_FLAG:
        raise Refused(
            grpc.StatusCode.UNIMPLEMENTED,
            "compressed request messages are not accepted: send them uncompressed",
            reason="COMPRESSION_NOT_SUPPORTED",
        )
    if flag:
        raise bad(f"unknown frame flags 0x{flag:02x}")
    if length > max_message_bytes:
        raise too_large(max_message_bytes, f"the request message declares {length} bytes")
    end = HEADER_BYTES + length
    if len(body) < end:
        raise bad(
            f"the frame declares a {length}-byte message but the body holds"
            f" {len(body) - HEADER_BYTES} bytes after its header"
        )
    rest = body[end:]
    if rest:
        if (
            len(rest) >= HEADER_BYTES
            and HEADER_BYTES + struct.unpack_from(">I", rest, 1)[0] <= len(rest)
            and not rest[0] & _TRAILER_FLAG
        ):
            raise bad("a unary or server-streaming call takes one request message, not more")
        raise bad(f"{len(rest)} bytes follow the request message")
    return body[HEADER_BYTES:end]


def too_large(max_message_bytes: int, what: str) -> Refused:
    """The refusal of a request bigger than the edge takes."""
    return Refused(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{what}; the edge takes request messages of at most {max_message_bytes} bytes",
        reason="REQUEST_TOO_LARGE",
    )
