"""gRPC client of the reload benchmark's grpc phase, run as its own process.

    .venv/bin/python bench/reload_grpc.py PORT [--streams 4] [--stream-messages 40]
        [--stream-interval-ms 50] [--unary 2] [--unary-interval 0.02]

Against tests/integration/grpc_echo.py's server (through a proxy), on one channel:
- --streams threads, each making server-streaming calls back to back: one call asks for
  --stream-messages messages, one every --stream-interval-ms (2 s by default) and checks
  that they arrive complete and in order;
- --unary threads, each making a unary echo call every --unary-interval s.
Runs until SIGTERM, lets the calls in flight end, then prints one JSON line: calls ok and failed
per kind, "streams cut" (a streaming call that failed after its first message arrived), and
every failure with its CLOCK_MONOTONIC time and status code.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from grpc_echo import METHOD, STREAM_METHOD  # noqa: E402

CALL_TIMEOUT_S = 15.0


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {"stream": 0, "unary": 0}
        self.failed: dict[str, dict[str, int]] = {"stream": {}, "unary": {}}
        self.streams_cut = 0
        self.events: list[list] = []    # [time, kind of call, what]
        self.details: list[str] = []     # the first few error details, as grpcio words them

    def success(self, kind: str) -> None:
        with self.lock:
            self.ok[kind] += 1

    def failure(self, kind: str, what: str, cut: bool = False, details: str = "") -> None:
        with self.lock:
            if details and len(self.details) < 10:
                self.details.append(f"{kind} {what}: {details}")
            self.failed[kind][what] = self.failed[kind].get(what, 0) + 1
            self.streams_cut += cut
            self.events.append([round(time.monotonic(), 4), kind, what])


def streaming(channel, args, tally: Tally, stop: threading.Event) -> None:
    call = channel.unary_stream(STREAM_METHOD)
    request = b"%d,%d" % (args.stream_messages, args.stream_interval_ms)
    while not stop.is_set():
        got = 0
        try:
            for message in call(request, timeout=CALL_TIMEOUT_S):
                if message != b"%d" % got:
                    raise ValueError(f"message {got} was {message!r}")
                got += 1
            if got != args.stream_messages:
                tally.failure("stream", f"ended after {got} messages", cut=True)
            else:
                tally.success("stream")
        except grpc.RpcError as exc:
            tally.failure("stream", str(exc.code()).removeprefix("StatusCode."), cut=got > 0, details=exc.details())
        except ValueError:
            tally.failure("stream", "wrong message", cut=True)


def unary(channel, args, tally: Tally, stop: threading.Event) -> None:
    call = channel.unary_unary(METHOD)
    n = 0
    while not stop.is_set():
        payload = b"echo %d" % n
        n += 1
        try:
            answer = call(payload, timeout=CALL_TIMEOUT_S)
            if answer == payload:
                tally.success("unary")
            else:
                tally.failure("unary", "wrong answer")
        except grpc.RpcError as exc:
            tally.failure("unary", str(exc.code()).removeprefix("StatusCode."), details=exc.details())
        stop.wait(args.unary_interval)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="reload_grpc.py")
    ap.add_argument("port", type=int)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--stream-messages", type=int, default=40)
    ap.add_argument("--stream-interval-ms", type=int, default=50)
    ap.add_argument("--unary", type=int, default=2)
    ap.add_argument("--unary-interval", type=float, default=0.02)
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    tally = Tally()
    channel = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    threads = [threading.Thread(target=streaming, args=(channel, args, tally, stop)) for _ in range(args.streams)]
    threads += [threading.Thread(target=unary, args=(channel, args, tally, stop)) for _ in range(args.unary)]
    started = time.monotonic()
    print(json.dumps({"started": started}), flush=True)
    for t in threads:
        t.start()
    while not stop.wait(0.5):      # the main thread must stay free for the signal handler
        pass
    stopped = time.monotonic()
    for t in threads:
        t.join(CALL_TIMEOUT_S + 5)
    channel.close()
    print(json.dumps({"started": started, "stopped": stopped, "ok": tally.ok, "failed": tally.failed,
                      "streams_cut": tally.streams_cut, "error_details": tally.details,
                      "events": tally.events}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
