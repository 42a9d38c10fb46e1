"""A generated access log render (formatter._generate) writes attribute reads and RESP() in
place of calls to the operators' getters: it must render exactly what the getters render,
piece by piece, with values present, missing and empty."""

import pytest

from baton.worker.codecs.message import Headers, Response
from baton.worker.proxy.http import formatter
from baton.worker.proxy.http.formatter import DEFAULT_FORMAT, compile_format

from .test_formatter import completed_info, make_info

INLINED = [name for name, make in formatter.OPERATORS.items()
           if getattr(make("X", None, None) if name not in ("REQ", "RESP", "TRAILER",
                                                           "START_TIME", "HOSTNAME") else None,
                      "inline", None)]
FORMATS = [
    DEFAULT_FORMAT,
    " ".join(f"%{name}%" for name in INLINED) + " %RESP(X-A?X-B)% %RESP(:STATUS)% %REQ(X-MULTI)%\n",
    "%RESPONSE_CODE%|%RESP(X-A)%|%DURATION%|%RESPONSE_FLAGS%",
    # REQ() read in one pass (repeated, empty, missing, alternatives, pseudo-headers, one a
    # request does not have) and RESP() with :status either side of an alternative.
    "%REQ(:SCHEME)% %REQ(:FOO?X-MULTI)% %REQ(X-NONE?:AUTHORITY)% %REQ(X-EMPTY?:PATH)% "
    "%REQ(X-MULTI):1% %REQ(USER-AGENT)% %REQ(:METHOD?X-NONE)% %REQ(X-NONE)% "
    "%RESP(:STATUS?X-A)% %RESP(X-NONE?:STATUS)% %RESP(X-A?X-B)% %RESP(X-NONE)%\n",
]


def infos():
    yield make_info()                       # no response, nothing measured
    info = completed_info()
    yield info
    info = completed_info()
    info.response = Response(503, Headers([("x-b", "2"), ("x-a", ""), ("x-a", "1")]))
    info.response_flags = ["UH", "NR"]
    info.protocol = ""
    info.route_name = "r"
    info.last_downstream_byte = 100.0125
    yield info
    yield make_info(request=None)           # (a stream with no request: REQ() missing)


def by_getters(fmt: str, info, missing: str = "-") -> str:
    """The line as the getters give it, one call per piece (no generated code)."""
    out = []
    for part in formatter._parse(fmt):
        if isinstance(part, str):
            out.append(part)
            continue
        value = formatter._getter(part)(info)
        out.append(missing if value is None else str(value))
    return "".join(out)


def test_the_inlined_operators_are_the_attribute_reads():
    assert {"RESPONSE_CODE", "BYTES_SENT", "DURATION", "PROTOCOL", "UPSTREAM_HOST"} <= set(INLINED)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("omit", [False, True])
def test_a_generated_render_writes_what_the_getters_give(fmt, omit):
    render = compile_format(fmt, omit)
    for info in infos():
        assert render(info) == by_getters(fmt, info, "" if omit else "-")


def test_the_default_start_time_read_in_place_is_the_getters_at_every_millisecond_edge():
    """The generated render takes START_TIME's kept text while the start time is inside the
    kept millisecond's range, and calls the getter outside it: the same text either way, for
    start times around millisecond and second edges, in order, back and forth and repeated."""
    import random
    render = compile_format("%START_TIME% %RESPONSE_CODE%\n")
    second = 1_796_000_000
    times = [second + ms / 1000 + micros / 1e6 for ms in (0, 1, 499, 998, 999)
             for micros in (-1.5, -1, -0.5, 0, 0.4, 0.5, 0.6, 1, 1.5, 2, 2.5, 500, 997.5, 998,
                            998.5, 999, 999.4, 999.5, 999.6)]
    rng = random.Random(7)
    times += [second + rng.random() for _ in range(200)]
    for order in (times, times[::-1], random.Random(3).sample(times * 2, 2 * len(times))):
        for t in order:
            info = make_info(start_time=t)
            assert render(info) == f"{formatter._DefaultTime()(info)} 0\n", t
