"""generic_proxy's access log formatter (worker/proxy/rpc/access_log.py): its operators over
an RPC request, the common ones beside them, and the config check of xds/generic_proxy.py."""

import json

import pytest

from baton.tests.integration.generic_proxy_config import action, generic_filter, matcher_list
from baton.tests.unit.test_generic_proxy import translate
from baton.worker.proxy.http.formatter import FormatError, compile_format
from baton.worker.proxy.rpc import access_log
from baton.worker.proxy.rpc.routing import Request

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def info(**answer):
    request = Request("org.A", "1.0", None, "get", {"env": "test", "trace": "t1"})
    i = access_log.RpcLogInfo(request, 10.0, "dubbo", ("127.0.0.1", 4000), ("127.0.0.1", 20880),
                              7)
    i.start_time = 1_700_000_000.25
    i.upstream_cluster, i.upstream_host = "up", "127.0.0.1:9000"
    access_log.write((), i, 10.0125, **answer)
    return i


def render(fmt, i, omit=False):
    return access_log.compile_rpc_format({"format": fmt, "omit_empty_values": omit})(i)


def test_generic_proxy_operators_read_the_request_and_its_answer():
    i = info(code=20, details="via_upstream", properties={"k": "v"})
    fmt = ("%METHOD% %HOST% %PATH% %PROTOCOL% %REQUEST_PROPERTY(env)% "
           "%REQUEST_PROPERTY(version)% %REQUEST_PROPERTY(none)% %RESPONSE_PROPERTY(k)% "
           "%GENERIC_RESPONSE_CODE% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS%")
    assert render(fmt, i) == "get org.A org.A dubbo test 1.0 - v 20 20 via_upstream -"
    assert render("%METHOD:2% %REQUEST_PROPERTY(trace):1%", i) == "ge t"


def test_common_operators_beside_them():
    i = info(code=80, details="connection_failure", flag="UF")
    fmt = ("[%START_TIME%] %DURATION% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% "
           "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %CONNECTION_ID% "
           "%RESPONSE_FLAGS%")
    assert render(fmt, i) == ("[2023-11-14T22:13:20.250Z] 12 127.0.0.1:9000 up 127.0.0.1:4000 "
                              "127.0.0.1:20880 7 UF")


def test_nothing_answered_is_missing_and_http_operators_are_missing():
    i = info(flag="DC")
    assert render("%GENERIC_RESPONSE_CODE% %RESPONSE_CODE% %RESPONSE_PROPERTY(k)% "
                  "%REQ(:METHOD)% %RESPONSE_FLAGS%", i) == "- 0 - - DC"
    assert render("%GENERIC_RESPONSE_CODE%|%METHOD%", info(flag="DC"), omit=True) == "|get"


def test_json_keeps_the_code_a_number_and_missing_values_null():
    build = access_log.compile_rpc_format({"json_format": {
        "code": "%GENERIC_RESPONSE_CODE%", "method": "%METHOD%", "prop": "%RESPONSE_PROPERTY(x)%",
        "line": "%HOST%.%METHOD%"}})
    assert json.loads(build(info(code=20))) == {"code": 20, "method": "get", "prop": None,
                                                "line": "org.A.get"}
    assert json.loads(build(info()))["code"] is None


def test_format_errors():
    for fmt in ("%REQUEST_PROPERTY%", "%RESPONSE_PROPERTY()%", "%METHOD(x)%", "%NOPE%"):
        with pytest.raises(FormatError):
            access_log.compile_rpc_format({"format": fmt})
    with pytest.raises(FormatError):             # HTTP's table does not have them
        compile_format("%METHOD%")


def logged(logs):
    config = generic_filter({"name": "r", "routes": matcher_list([], action("a"))})
    config["typed_config"]["access_log"] = logs
    return translate(config["typed_config"], ("a",))


def test_config_takes_file_and_stdout_logs_with_the_rpc_operators():
    config, errors, _ = logged([
        {"name": "f", "typed_config": {"@type": FILE_LOG, "path": "/tmp/x.log",
                                       "log_format": {"text_format_source": {
                                           "inline_string": "%METHOD% %GENERIC_RESPONSE_CODE%\n"}}}},
        {"name": "s", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": {"m": "%METHOD%"}}}}])
    assert not errors, errors
    assert [(e["path"], e["format"], e["json_format"]) for e in config["access_log"]] == [
        ("/tmp/x.log", "%METHOD% %GENERIC_RESPONSE_CODE%\n", None),
        ("/dev/stdout", None, {"m": "%METHOD%"})]


def test_config_refuses_an_unknown_operator_naming_its_path():
    config, errors, _ = logged([{"name": "f", "typed_config": {
        "@type": FILE_LOG, "path": "/tmp/x.log", "format": "%METHOD% %NOPE%\n"}}])
    assert config is None
    assert errors == ["f.access_log[0].typed_config.format: Not supported field in StreamInfo: "
                      "NOPE"], errors
