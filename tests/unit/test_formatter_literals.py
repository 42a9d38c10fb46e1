"""A generated access log render (formatter._generate) holds a format's literal text as
constants of its f-strings (repr() literals in the generated source) and cuts a long format
into f-strings of at most _FSTRING_VALUES pieces: any literal text, any number of pieces,
renders exactly what the getters give, and config text never runs as code."""

import dis

import pytest

from baton.worker.proxy.http import formatter
from baton.worker.proxy.http.formatter import DEFAULT_FORMAT, compile_format

from .test_formatter import completed_info, make_info
from .test_formatter_inline import by_getters

AWKWARD = ['{', '}', '{{x}}', '"', "'", '\\', '\\n', '\n', '\t', '"""', "'''", 'f"{1}"',
           "é€😀", "\udcff", "\x00", "{__import__('os')}", " + ", "#"]


@pytest.mark.parametrize("text", AWKWARD)
def test_any_literal_text_is_rendered_as_it_is(text):
    fmt = f"{text}%RESPONSE_CODE%{text}%REQ(X-MULTI)%{text}%REQ(USER-AGENT)%{text}"
    for info in (make_info(), completed_info()):
        assert compile_format(fmt)(info) == by_getters(fmt, info)


@pytest.mark.parametrize("fields", [14, 15, 16, 29, 30, 31, 45, 61])
def test_a_format_of_any_length_renders_what_the_getters_give(fields):
    ops = ["%RESPONSE_CODE%", "%REQ(X-MULTI)%", "%PROTOCOL%", "%BYTES_SENT%",
           "%RESP(X-A)%", "%UPSTREAM_HOST%", "%RESPONSE_FLAGS%", "%REQ(:PATH)%"]
    fmt = "<".join(ops[k % len(ops)] for k in range(fields)) + "\n"
    render = compile_format(fmt)
    for info in (make_info(), completed_info(), make_info(request=None)):
        assert render(info) == by_getters(fmt, info)


def test_the_default_format_is_built_without_a_list():
    render = compile_format(DEFAULT_FORMAT)
    names = {i.opname for i in dis.get_instructions(render)}
    assert "LIST_APPEND" not in names and "BUILD_STRING" in names
    assert formatter._FSTRING_VALUES == 30
