"""RE2 patterns with RE2's meaning on Python's `re`: Envoy's regexes (safe_regex matchers,
regex_rewrite) are RE2; they are translated (ASCII classes, full match), and what RE2 lacks
(backreferences, lookaround, possessive repeats...) is refused, as Envoy refuses it. Not
reproduced: RE2's program-size limit (Envoy refuses a regex whose compiled program is over 100
instructions; Baton accepts it) and RE2's linear-time guarantee.

    full = compile_re2("/v[0-9]+/.*").fullmatch
    parts = compile_substitution("\\1-x", regex.groups)     # None: RE2 would refuse it
    replace_all(regex, parts, text)                           # RE2::GlobalReplace
"""

from __future__ import annotations

__all__ = ["RegexError", "compile_re2", "compile_substitution", "replace_all"]

import re

class RegexError(ValueError):
    """A pattern RE2 would refuse, or one Baton cannot run with RE2's meaning."""


_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")
_FLAGS = re.compile(r"\(\?([imsU]*)(-([imsU]*))?(:|\))")
_POSIX = {"alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
          "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z",
          "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ",
          "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f"}
_RE2_MAX_REPEAT = 1000
_PYTHON_ONLY_ESCAPES = "ZuUNg"


def compile_re2(pattern: str) -> re.Pattern:
    """Compile an RE2 pattern with RE2's meaning; RegexError when RE2 (or Baton) refuses it."""
    try:
        return re.compile(_translate(pattern), re.ASCII)
    except re.error as exc:
        raise RegexError(f"invalid regex {pattern!r}: {exc}") from None


def _translate(p: str) -> str:
    out = []
    closers = [0]          # per open group: how many scoped-flag groups to close with it
    unsafe = [False]       # per open group: a (?flags) scope after other atoms of its branch
    branch_start = True    # nothing emitted yet in the current alternative
    multiline = bool(re.search(r"\(\?[isU]*m", p))
    i, n = 0, len(p)
    can_repeat = False
    while i < n:
        c = p[i]
        if c == "\\":
            token, i = _escape(p, i)
            out.append(token)
            can_repeat, branch_start = True, False
            continue
        if c == "[":
            token, i = _char_class(p, i)
            out.append(token)
            can_repeat, branch_start = True, False
            continue
        if c == "(":
            if p.startswith("(?", i):
                m = _FLAGS.match(p, i)
                if m is None:
                    rest = p[i + 2:i + 4]
                    if rest.startswith("P<") or (rest.startswith("<")
                                                 and rest[1:2] not in ("=", "!")):
                        out.append("(?P<")
                        i += 4 if rest.startswith("P<") else 3
                        closers.append(0)
                        unsafe.append(False)
                        can_repeat, branch_start = False, True
                        continue
                    raise RegexError(f"invalid or unsupported perl operator: {p[i:i + 4]!r} "
                                     "(RE2 has no lookaround, backreferences, atomic groups, "
                                     "conditionals or comments)")
                if "U" in m.group(0):
                    raise RegexError("the U (ungreedy) flag is not supported")
                if m.group(4) == ":":
                    out.append(m.group(0))
                    closers.append(0)
                    unsafe.append(False)
                    branch_start = True
                else:
                    # RE2's (?i) lasts to the end of the enclosing group; Python wants it
                    # scoped: (?i: ... up to that group's ')'. Equivalent unless atoms of
                    # the same alternative come before it and a '|' comes after.
                    out.append(m.group(0)[:-1] + ":")
                    closers[-1] += 1
                    unsafe[-1] = unsafe[-1] or not branch_start
                i = m.end()
                can_repeat = False
                continue
            out.append("(")
            closers.append(0)
            unsafe.append(False)
            i += 1
            can_repeat, branch_start = False, True
            continue
        if c == ")":
            if len(closers) == 1:
                raise RegexError("unmatched ')'")
            out.append(")" * (closers.pop() + 1))
            unsafe.pop()
            i += 1
            can_repeat, branch_start = True, False
            continue
        if c == "|":
            if unsafe[-1]:
                raise RegexError("a (?flags) after other atoms of an alternative, followed by "
                                 "'|' in the same group, is not supported")
            out.append(c)
            i += 1
            can_repeat, branch_start = False, True
            continue
        if c in "*+?" or (c == "{" and _REPEAT.match(p, i)):
            if not can_repeat:
                raise RegexError(f"missing argument to repetition operator: {c}")
            if c == "{":
                m = _REPEAT.match(p, i)
                low = int(m.group(1))
                high = low if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
                if low > _RE2_MAX_REPEAT or (high is not None and (high > _RE2_MAX_REPEAT
                                                                   or high < low)):
                    raise RegexError(f"invalid repetition size: {m.group(0)}")
                out.append(m.group(0))
                i = m.end()
            else:
                out.append(c)
                i += 1
            if i < n and p[i] == "?":
                out.append("?")
                i += 1
            if i < n and (p[i] in "*+?" or (p[i] == "{" and _REPEAT.match(p, i))):
                raise RegexError(f"bad repetition operator: {p[i - 1:i + 1]}")
            can_repeat = False
            continue
        if c == "{":            # not a repetition: RE2 takes it literally (Python may not)
            out.append("\\{")
            i += 1
            can_repeat, branch_start = True, False
            continue
        if c == "$" and not multiline:
            out.append("\\Z")   # RE2's $ is end of text; Python's also matches before a final \n
            i += 1
            can_repeat, branch_start = False, False
            continue
        out.append(c)
        can_repeat, branch_start = c != "^", False
        i += 1
    if len(closers) != 1:
        raise RegexError("missing ')'")
    out.append(")" * closers[0])
    return "".join(out)


def _escape(p: str, i: int):
    if i + 1 >= len(p):
        raise RegexError("trailing \\")
    d = p[i + 1]
    if d in "123456789":
        raise RegexError(f"invalid escape sequence: \\{d} (RE2 has no backreferences)")
    if d == "z":
        return "\\Z", i + 2
    if d in "pP":
        raise RegexError(f"\\{d} (Unicode classes) is not supported")
    if d == "C":
        raise RegexError("\\C is not supported")
    if d in _PYTHON_ONLY_ESCAPES:
        raise RegexError(f"invalid escape sequence: \\{d}")
    if d == "Q":
        end = p.find("\\E", i + 2)
        literal = p[i + 2:] if end < 0 else p[i + 2:end]
        return "(?:" + re.escape(literal) + ")", len(p) if end < 0 else end + 2
    if d == "x" and p.startswith("{", i + 2):
        end = p.find("}", i + 3)
        try:
            return re.escape(chr(int(p[i + 3:end], 16))), end + 1
        except ValueError:
            raise RegexError(f"invalid escape sequence: {p[i:end + 1]}") from None
    return p[i:i + 2], i + 2


def _char_class(p: str, i: int):
    """[...] -> a Python class: POSIX names expanded, Python's set-operation characters escaped."""
    out = ["["]
    j = i + 1
    if p.startswith("^", j):
        out.append("^")
        j += 1
    first = True
    while j < len(p):
        c = p[j]
        if c == "]" and not first:
            out.append("]")
            return "".join(out), j + 1
        first = False
        if c == "\\":
            token, j = _escape(p, j)
            if token == "\\Z":
                raise RegexError("invalid escape sequence: \\z in a character class")
            out.append(token)
            continue
        if c == "[" and p.startswith("[:", j):
            end = p.find(":]", j + 2)
            name = p[j + 2:end] if end > 0 else ""
            if name not in _POSIX:
                raise RegexError(f"invalid character class range: {p[j:end + 2]}")
            out.append(_POSIX[name])
            j = end + 2
            continue
        out.append("\\" + c if c in "[&~|" else c)
        j += 1
    raise RegexError("missing closing ]")


def compile_substitution(template: str, groups: int):
    """An RE2 rewrite string (\\0..\\9 groups, \\\\ a backslash) -> a list of parts (str
    literals and int group numbers), or None when RE2 would refuse it: Envoy then leaves the
    path unchanged."""
    parts, literal, i = [], [], 0
    while i < len(template):
        c = template[i]
        if c != "\\":
            literal.append(c)
            i += 1
            continue
        d = template[i + 1:i + 2]
        if d == "\\":
            literal.append("\\")
        elif d.isdigit() and int(d) <= groups:
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(int(d))
        else:
            return None
        i += 2
    if literal:
        parts.append("".join(literal))
    return parts


def replace_all(regex: re.Pattern, parts, text: str) -> str:
    """RE2::GlobalReplace: every non-overlapping match replaced, but no empty match right
    where the previous match ended (Python's re.sub takes that one since 3.7)."""
    out, pos, last_end, n = [], 0, -1, len(text)
    search = regex.search
    while pos <= n:
        m = search(text, pos)
        if m is None:
            break
        start, end = m.span()
        out.append(text[pos:start])
        if start == end and start == last_end:     # skip ahead one character
            out.append(text[pos:pos + 1])
            pos += 1
            continue
        for part in parts:
            out.append(part if isinstance(part, str) else (m.group(part) or ""))
        pos = last_end = end
    out.append(text[pos:])
    return "".join(out)
