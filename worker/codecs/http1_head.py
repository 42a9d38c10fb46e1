"""What an HTTP/1.1 head says, read once (the two codecs, http1_server.py and http1_client.py,
share it): header names decoded and lower-cased, a small head's pairs decoded, and what each
side reads from them (the pairs that pass on, Host, framing, hop-by-hop names), remembered per
head.

Why: an upstream sends the same head again and again (only its Date moves, once a second),
a client its same few headers; reading them once and looking them up after is cheaper than
reading each message (bench/RESULTS.md, issue 17).

Rules of this file:
- Every memo is bounded (heads come from the peers): past the bound it is cleared or left
  alone, and the head is read afresh, as before.
- Every memo pays its way or rests (MemoGate): judged each time it is full, one that was
  seldom hit is neither looked up nor filled for a while, and the head is read afresh.
- What is remembered is immutable (tuples, str); a message gets lists of its own made from it.
- Pure functions of the head's pairs: nothing here knows a connection or a parser.
"""

from __future__ import annotations

from typing import NamedTuple

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "te", "upgrade"})
# Request headers the server side must look at (anything else passes as it came).
_SPECIAL_REQUEST_HEADERS = HOP_BY_HOP | {"host", "expect", "content-length"}

_NAMES: dict = {}           # header name as received -> lower-case str: a memo, bounded
_NAMES_MAX = 2048


def _lower(name: bytes) -> str:
    """A header name, decoded and lower-cased; remembered, since the same few names come on
    every message (bounded: names come from the peers; past the bound they are decoded each
    time, as before)."""
    text = name.decode("latin-1").lower()
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[name] = text
    return text


_HEADS: dict = {}           # a small head's raw (name, value) pairs -> its _Head
_HEADS_MAX = 256            # bounded (heads come from the peers): cleared when full
_HEAD_MEMO_BYTES = 2048     # larger heads are decoded each time, not remembered


class MemoGate:
    """Whether a memo pays now. A memo costs on every message it misses (a key built and
    hashed, an entry added, the table cleared when full) and saves only on messages it has
    seen: traffic that never repeats (each path, request id or echoed header different:
    bench/RESULTS.md's h1v) paid ~9k instructions a request in Baton's three memos for
    nothing. So a memo is judged whenever it is full: if fewer than a quarter of its entries
    were hit since the last judgement, it rests for the next REST messages (neither looked up
    nor filled; they are read afresh, as a miss is), then starts again, empty. A memo that
    hits (wrk's identical requests, an upstream's same head) is never full, so never judged."""

    __slots__ = ("hits", "resting")
    REST = 4096

    def __init__(self):
        self.hits = 0               # lookups that found an entry since the last judgement
        self.resting = 0            # messages still to pass without the memo

    def judge(self, entries: int) -> None:
        """The memo is full (`entries`) and about to be cleared."""
        if self.hits * 4 < entries:
            self.resting = self.REST
        self.hits = 0


_HEADS_GATE = MemoGate()


class LinesGate(MemoGate):
    """Whether reading heads by their lines (plain_request, plain_response) pays now: a head
    off the lines (a chunked upstream, a client whose requests say Connection: close) costs a
    split and a translate before llhttp reads it anyway. Judged every JUDGED misses: fewer
    hits than misses since the last judgement, and the lines rest for REST messages (llhttp
    reads them, as before). Traffic the lines read (h1v: no miss) is never judged."""

    __slots__ = ("misses",)
    JUDGED = 64

    def __init__(self):
        super().__init__()
        self.misses = 0

    def missed(self) -> None:
        self.misses += 1
        if self.misses >= self.JUDGED:
            self.judge(4 * self.misses)     # rests when hits * 4 < 4 * misses
            self.misses = 0


class _Head:
    """A head as decoded, and what each side's codec read from it. An upstream sends the same
    head again and again (only its Date moves, once a second), a client its same few headers:
    a small head is decoded and read once, looked up after. The readings are immutable (tuples):
    each message gets new lists made from them."""

    __slots__ = ("pairs", "request", "response")

    def __init__(self, pairs: tuple):
        self.pairs = pairs          # lower-case str names, str values
        self.request = None         # read_request(pairs), once the server side asked
        self.response = None        # read_response(pairs), once the client side asked


def _decoded(headers: list) -> tuple:
    names = _NAMES
    return tuple([(names.get(n) or _lower(n), v.decode("latin-1")) for n, v in headers])


def lookup_head(headers: list, size: int) -> _Head:
    """The head of these raw pairs (`size` bytes): remembered when small (and the memo pays,
    MemoGate), else new."""
    gate = _HEADS_GATE
    if gate.resting:
        gate.resting -= 1
        return _Head(_decoded(headers))
    if size > _HEAD_MEMO_BYTES:
        return _Head(_decoded(headers))
    key = tuple(headers)
    head = _HEADS.get(key)
    if head is not None:
        gate.hits += 1
        return head
    head = _Head(_decoded(headers))
    if len(_HEADS) >= _HEADS_MAX:
        gate.judge(len(_HEADS))
        _HEADS.clear()
        if gate.resting:
            return head
    _HEADS[key] = head
    return head


# Connection values whose tokens are all hop-by-hop already: nothing to add.
_LISTS_NOTHING = frozenset({"keep-alive", "Keep-Alive", "upgrade", "Upgrade"})


def _hop_by_hop(headers: list) -> frozenset:
    """The hop-by-hop names for this message: the fixed set plus what Connection lists."""
    listed = None
    for name, value in headers:
        if name == "connection" and value not in _LISTS_NOTHING:
            for token in value.split(","):
                token = token.strip().lower()
                if token and token not in HOP_BY_HOP:      # "keep-alive": nothing to add
                    listed = listed or set()
                    listed.add(token)
    return HOP_BY_HOP if listed is None else HOP_BY_HOP | listed


def _te_trailers(headers: list) -> bool:
    for name, value in headers:
        if name == "te" and "trailers" in value.lower():
            return True
    return False


def connection_keeps_alive(headers: list, http11: bool) -> bool:
    """Whether a message's Connection header lets the connection live on: HTTP/1.1 unless it
    says close, HTTP/1.0 only if it says keep-alive. (Where llhttp cannot decide: a version
    served as 1.0, such as 1.2, would get its 1.1 default; a HEAD response without framing
    looks close-delimited to it.)"""
    keep = http11
    for name, value in headers:
        if name == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "close" in tokens:
                return False
            keep = keep or "keep-alive" in tokens
    return keep


def read_request(raw: tuple) -> tuple:
    """What the server side reads from a request head's pairs, all of it per head, not per
    request (remembered on its _Head): (the pairs that pass on, Host's value, how many Hosts,
    Transfer-Encoding's values joined or None, whether a body comes, Expect: 100-continue,
    whether an Upgrade came). Passing on: not Host (the request line's authority), not the
    hop-by-hop names nor what Connection lists, TE only as "trailers", not an Expect:
    100-continue (answered here)."""
    te = None
    expect_continue = False
    authority = ""
    has_body = False
    hop = False             # a hop-by-hop name came (Connection may list more)
    upgrade_seen = False
    hosts = 0
    # One pass for what needs a look (host, expect, content-length, hop-by-hop names);
    # anything else passes as it came.
    headers = []
    for kv in raw:
        name = kv[0]
        if name in _SPECIAL_REQUEST_HEADERS:
            if name == "host":
                authority = kv[1]
                hosts += 1
                continue
            if name in HOP_BY_HOP:
                hop = True
                if name == "transfer-encoding":
                    has_body = True
                    te = kv[1] if te is None else te + "," + kv[1]
                elif name == "upgrade":
                    upgrade_seen = True
                continue
            if name == "expect":
                if kv[1].lower() == "100-continue":
                    expect_continue = True
            elif name == "content-length" and kv[1].strip() not in ("", "0"):
                has_body = True
        headers.append(kv)
    if hop:
        drop = _hop_by_hop(raw)
        if drop is not HOP_BY_HOP:
            headers = [kv for kv in headers if kv[0] not in drop]
        if _te_trailers(raw):
            headers.append(("te", "trailers"))      # the one TE value a proxy passes on
    if expect_continue:
        headers = [kv for kv in headers if kv[0] != "expect"]
    return tuple(headers), authority, hosts, te, has_body, expect_continue, upgrade_seen


def read_response(raw: tuple) -> tuple:
    """What the client side reads from a response head's pairs, per head (remembered on its
    _Head): (the pairs that pass on: not the hop-by-hop names nor what Connection lists, the
    first Content-Length or None, whether the body is framed: Content-Length or
    Transfer-Encoding)."""
    kept = []
    length = None
    chunked = listed = False
    for kv in raw:
        name = kv[0]
        if name in HOP_BY_HOP:
            if name == "transfer-encoding":
                chunked = True
            elif name == "connection" and kv[1] not in _LISTS_NOTHING:
                listed = True
            continue
        if length is None and name == "content-length":
            length = kv[1]
        kept.append(kv)
    if listed:
        drop = _hop_by_hop(raw)
        kept = [kv for kv in kept if kv[0] not in drop]
    return tuple(kept), length, length is not None or chunked


# --- whole messages known by their bytes -----------------------------------------------------
# A client sends the very same bytes for its requests (wrk, a health checker, a probe), an
# upstream the same response head (its Date moves once a second). A message that llhttp read
# once, from the first byte of a read, in the canonical layout (one space apart, no space
# around values: the head's size is exactly what the callbacks counted), is known by its bytes
# after: the codec makes the same events from what it remembered, without the parser's dozen
# callbacks from C. Nothing is decided here that llhttp did not decide the first time (the
# same bytes from a message boundary parse the same); a codec's own limits (header bytes and
# count, which differ by listener and cluster) are checked again on each use.

_KNOWN_MAX = 256            # bounded (messages come from the peers): cleared when full
KNOWN_BYTES = 2048          # larger heads are parsed each time, not remembered nor looked up
KNOWN_REQUESTS: dict = {}   # a whole bodiless request's bytes -> KnownRequest
KNOWN_RESPONSES: dict = {}  # a response head's bytes (to its empty line) -> KnownResponse
# Each with its MemoGate: a codec skips the lookup while it rests, counts its hits.
REQUESTS_GATE = MemoGate()
RESPONSES_GATE = MemoGate()


class KnownRequest(NamedTuple):
    """A bodiless request without upgrade or Expect, as the server codec reported it."""
    method: str
    target: str
    authority: str
    kept: tuple             # read_request's pairs that pass on
    version: str
    keep_alive: bool
    size: int               # bytes of the head, as the limit counts them
    count: int              # header lines


class KnownResponse(NamedTuple):
    """A response framed by a Content-Length > 0 (not 1xx, 101, 204 or 304), to a request
    other than HEAD or CONNECT, as the client codec reported it."""
    status: int
    kept: tuple             # read_response's pairs that pass on
    length: int             # the body's bytes
    keep_alive: bool
    size: int
    count: int


def remember(memo: dict, gate: MemoGate, key: bytes, known) -> None:
    if len(key) <= KNOWN_BYTES and not gate.resting:
        if len(memo) >= _KNOWN_MAX:
            gate.judge(len(memo))
            memo.clear()
            if gate.resting:
                return
        memo[key] = known


# --- responses read by their lines ----------------------------------------------------------
# An upstream whose responses differ (a path or an id echoed in a header: bench/RESULTS.md's
# h1v) never repeats a head, so the memos above rest; yet its status line and its header names
# are the same on every response, and what llhttp checks in the rest (a value's bytes) is a
# table lookup. A response head read by its lines: a status line that llhttp read before
# (STATUS_LINES), then lines of a name llhttp read before (_NAMES: tokens) and a value in the
# canonical layout (": " then visible ASCII, obs-text, inner spaces and tabs; nothing llhttp
# would trim or refuse), exactly one Content-Length > 0, no other framing or hop-by-hop name
# but a `Connection: keep-alive`. It then reads as a known response (KnownResponse): the same
# events, and the head is remembered in KNOWN_RESPONSES when that memo does not rest. Anything
# else, and a body that is not exactly the rest of the read, goes to llhttp as before.

STATUS_LINES: dict = {}     # b"HTTP/1.1 200 OK" -> 200: status lines llhttp read, bounded
REQUEST_LINES_GATE = LinesGate()
RESPONSE_LINES_GATE = LinesGate()
_STATUS_LINES_MAX = 64
_REASON_BYTES = bytes(range(0x21, 0x7f)) + b" \t" + bytes(range(0x80, 0x100))
# The control bytes llhttp refuses in a value (all but HTAB), and CR and LF: one pass over a
# head's lines finds them all, CR LF only allowed as the breaks between the lines.
_CONTROL = bytes(range(0x00, 0x09)) + bytes(range(0x0a, 0x20)) + b"\x7f"
_OWS = (0x20, 0x09)
_FRAMING = HOP_BY_HOP | {"content-length"}
# Header lines read by the lines before, one memo per side (a line reads differently in a
# request and a response: Host, Expect), each line as what it reads to (its bytes decide it
# alone: the names in _NAMES stay): the (name, value) pair that passes on; for a response's
# Content-Length, [pair, length]; for a request's Host, [value]; _KEEP_ALIVE for `Connection:
# keep-alive`. A head's usual lines (Server, Content-Type, Host, a client's User-Agent) repeat
# where the head does not; one dict lookup replaces a partition, a name lookup, the value's
# checks and its decoding. Lines that never repeat (an echoed path) fill a memo: cleared when
# full, as the memos above.
_RESPONSE_LINE_READS: dict = {}
_REQUEST_LINE_READS: dict = {}
_LINE_READS_MAX = 256
_KEEP_ALIVE = object()



# A line's value, checked where the lines are read (plain_response, plain_request; inline, not a
# call: a head that is not known has a line not seen before on nearly every message, an echoed
# path or an id): refused if it holds a byte llhttp refuses in one (a control byte other than
# HTAB), a CR or LF of its own (the head's lines were split at CR LF), or whitespace at either
# end. Only values are looked at: the name before one is a name llhttp read (_NAMES), and a
# line read before comes from a memo, so a head needs no pass over all its bytes. A plain
# value is printable (no HTAB, so only a space can end it); one with HTAB or obs-text is not,
# and is looked at byte by byte.


def learn_status_line(data: bytes, status: int) -> None:
    """llhttp read a response with `status` from the first byte of `data`: its status line is
    known from now on, if it is HTTP/1.1 with a reason, and a status whose response has a body
    (not 1xx, 204, 304)."""
    line = data[:data.find(b"\r\n")]
    if line in STATUS_LINES or not 200 <= status < 600 or status in (204, 304):
        return
    if line[:9] != b"HTTP/1.1 " or line[9:12] != b"%d" % status or line[12:13] != b" " or \
            len(line) < 14 or line[13:].translate(None, _REASON_BYTES):
        return
    if len(STATUS_LINES) >= _STATUS_LINES_MAX:
        STATUS_LINES.clear()
    STATUS_LINES[line] = status


# What a connection's last response head began with (plain_response's `leading`): its status
# line and the header lines before the first one the lines' memo did not know, as bytes, and
# what they read to: (those bytes, status, the pairs that pass on, Content-Length or 0, header
# lines). An upstream's heads begin alike (its status line, Server, Date for a second,
# Content-Type) and differ further on (an echoed path, an id, a length): a head that begins
# with those bytes is read from where they end. Its lines read as they did (a line's reading
# depends on its bytes alone: _NAMES keeps what it learned), so nothing is decided that the
# lines' memo would decide otherwise.
NO_LEADING = (b"", 0, (), 0, 0)


def plain_response(data: bytes, end: int):
    """The head data[:end] (its empty line included) read by its lines: (status, the pairs that
    pass on as a new list, its Content-Length, its header lines), or None: llhttp must read
    it. Its size in the limit's count is `end` (the canonical layout)."""
    read = response_by_lines(data, end, NO_LEADING)
    return None if read is None else read[:4]


def response_by_lines(data: bytes, end: int, leading: tuple):
    """plain_response's reading, and its leading lines for the next head (the fifth item),
    from what the connection's last head began with (`leading`, or NO_LEADING)."""
    known = leading[0]
    if known and data.startswith(known):
        _, status, pairs, length, count = leading
        kept = list(pairs)
        start = len(known)
        rest = data[start:end - 4].split(b"\r\n") if start < end - 2 else []
    else:
        lines = data[:end - 4].split(b"\r\n")
        status = STATUS_LINES.get(lines[0])
        if status is None:
            return None
        start = len(lines[0]) + 2
        leading = None
        kept = []
        length = count = 0
        rest = lines[1:]
    reads = _RESPONSE_LINE_READS
    first = -1          # where in `rest` the first line the memo did not know is
    for line in rest:
        read = reads.get(line)
        if read is None:
            if first < 0:
                # (Exact: an equal line before it would have missed first.)
                first = rest.index(line)
                first_kept = len(kept)
                first_length = length
            name, _, value = line.partition(b": ")
            text = _NAMES.get(name)
            if text is None or not value:
                return None
            value_text = value.decode("latin-1")
            if value_text.isprintable():
                if value_text[0] == " " or value_text[-1] == " ":
                    return None
            elif value[0] in _OWS or value[-1] in _OWS or \
                    len(value.translate(None, _CONTROL)) != len(value):
                return None
            if text in _FRAMING:
                if text == "content-length":
                    if not value.isdigit() or not int(value):
                        return None
                    read = [(text, value_text), int(value)]
                elif text == "connection" and value == b"keep-alive":
                    # hop-by-hop, and it lists nothing more (read_response)
                    read = _KEEP_ALIVE
                else:
                    return None
            else:
                read = (text, value_text)
            if len(reads) >= _LINE_READS_MAX:      # (inline: a call a message less)
                reads.clear()
            reads[line] = read
        if read.__class__ is tuple:
            kept.append(read)
        elif read is not _KEEP_ALIVE:
            if length:
                return None     # a second Content-Length
            pair, length = read
            kept.append(pair)
    if not length:
        return None
    if first < 0:                       # every line known: all of it leads
        first, first_kept, first_length = len(rest), len(kept), length
    if first or leading is None:
        lead = rest[:first]
        leading = (data[:start + sum(map(len, lead)) + 2 * first], status,
                   tuple(kept[:first_kept]), first_length, count + first)
    return status, kept, length, count + len(rest), leading


# A request read by its lines, the same way: a bodiless HTTP/1.1 request whose whole read is its
# head, a method llhttp knows, an origin-form target of RFC 3986's path and query characters
# (what llhttp takes as it is), one Host, lines of names llhttp read and values in the
# canonical layout, no framing, Expect or hop-by-hop name but a `Connection: keep-alive`.
# Its loop over the lines is plain_response's, written out again on purpose: as one shared
# function (the special lines marked, then handled) an h1v exchange cost 8.8k instructions
# more (bench/h1v_cost.py rig under callgrind, 220.8k against 229.6k).
_REQUEST_METHODS = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE",
                                             b"OPTIONS", b"PATCH", b"TRACE")}
_TARGET_BYTES = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                 b"-._~!$&'()*+,;=:@/?%")


def plain_request(data: bytes):
    """The request `data` (its whole head, nothing after) read by its lines: (method, target,
    Host's value, the pairs that pass on as a new list, its header lines), or None: llhttp
    must read it. Its size in the limit's count is len(data) (the canonical layout)."""
    if data[-4:] != b"\r\n\r\n":
        return None
    block = data[:-4]
    lines = block.split(b"\r\n")
    count = len(lines) - 1
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    method = _REQUEST_METHODS.get(parts[0])
    target = parts[1]
    # (lstrip, not translate: no table of 256 built per call; empty when every byte is one
    # of the target's.)
    if method is None or target[:1] != b"/" or target.lstrip(_TARGET_BYTES):
        return None
    reads = _REQUEST_LINE_READS
    kept = []
    authority = None
    for line in lines[1:]:
        read = reads.get(line)
        if read is None:
            name, _, value = line.partition(b": ")
            text = _NAMES.get(name)
            if text is None or not value:
                return None
            value_text = value.decode("latin-1")
            if value_text.isprintable():
                if value_text[0] == " " or value_text[-1] == " ":
                    return None
            elif value[0] in _OWS or value[-1] in _OWS or \
                    len(value.translate(None, _CONTROL)) != len(value):
                return None
            if text in _SPECIAL_REQUEST_HEADERS:
                if text == "host":
                    read = [value_text]
                elif text == "connection" and value == b"keep-alive":
                    # hop-by-hop, and it lists nothing more (read_request)
                    read = _KEEP_ALIVE
                else:
                    return None
            else:
                read = (text, value_text)
            if len(reads) >= _LINE_READS_MAX:      # (inline: a call a message less)
                reads.clear()
            reads[line] = read
        if read.__class__ is tuple:
            kept.append(read)
        elif read is not _KEEP_ALIVE:
            if authority is not None:
                return None     # a second Host
            authority = read[0]
    if authority is None:
        return None
    return method, target.decode("latin-1"), authority, kept, count
