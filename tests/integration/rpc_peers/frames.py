"""Dubbo and Bolt request/response frames for the tests, written with the tests' own Hessian
writer (hessian_writer.py), so a test can make any request a real client could."""

from __future__ import annotations

import random

from baton.worker.codecs import bolt, dubbo

from .hessian_writer import Writer

_DESCRIPTORS = {str: "Ljava/lang/String;", int: "J", bool: "Z", float: "D"}


def descriptor(args) -> str:
    return "".join(_DESCRIPTORS.get(type(a), "Ljava/lang/Object;") for a in args)


def dubbo_body(service: str, method: str, args=(), attachments=None, *, version: str = "",
               dubbo_version: str = "2.0.2", rng: random.Random | None = None,
               canonical: bool = False) -> bytes:
    writer = Writer(rng, canonical)
    for value in (dubbo_version, service, version, method, descriptor(args), *args,
                  dict(attachments or {})):
        writer.write(value)
    return writer.bytes()


def dubbo_request(request_id: int, service: str, method: str, args=(), attachments=None, *,
                  version: str = "", two_way: bool = True, rng=None,
                  canonical: bool = False) -> bytes:
    flags = dubbo.FLAG_REQUEST | dubbo.HESSIAN2 | (dubbo.FLAG_TWO_WAY if two_way else 0)
    return dubbo.frame(flags, 0, request_id, dubbo_body(
        service, method, args, attachments, version=version, rng=rng, canonical=canonical))


def dubbo_response(request_id: int, value, status: int = dubbo.OK) -> bytes:
    """A provider's answer: response type 1 (a value: the compact int 0x91, as Dubbo's
    writeByte writes it) and the value."""
    writer = Writer(canonical=True)
    writer.write(value)
    return dubbo.frame(dubbo.HESSIAN2, status, request_id, b"\x91" + writer.bytes())


def dubbo_value(frame) -> object:
    """The value of an OK response with a value (type 1 or 4)."""
    from baton.worker.codecs.hessian2 import Reader
    reader = Reader(frame.raw, dubbo.HEADER_SIZE)
    kind = reader.read()
    assert kind in (1, 4), f"response type {kind}"
    return reader.read()


SOFA_REQUEST = "com.alipay.sofa.rpc.core.request.SofaRequest"


def bolt_request(request_id: int, service: str, method: str, *, timeout: int = 0,
                 oneway: bool = False, extra_headers=None) -> bytes:
    header = {"service": service, "sofa_head_method_name": method, **(extra_headers or {})}
    content = Writer(random.Random(request_id)).write(method).bytes()
    return bolt.request(request_id, SOFA_REQUEST, header, content, timeout=timeout,
                        oneway=oneway)
