"""Running nft / iptables-restore / ipset in the current network namespace, with one-line errors."""

from __future__ import annotations

import re
import shutil
import subprocess

INSTALL_HINT = {
    "nft": "nftables",
    "ipset": "ipset",
}


class InterceptError(RuntimeError):
    """An interception step failed; str() is one line."""


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def run(cmd: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, input=input, text=True, capture_output=True)
    except FileNotFoundError:
        pkg = INSTALL_HINT.get(cmd[0], "iptables")
        raise InterceptError(f"{cmd[0]} not found: install it (apt-get install {pkg})") from None
    if check and proc.returncode != 0:
        raise InterceptError(f"{' '.join(cmd[:3])}: {one_line(proc.stderr or proc.stdout)}")
    return proc


def one_line(text: str) -> str:
    """The useful part of a tool's multi-line complaint, on one line."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    chosen = errors or lines
    # nft echoes the offending line and a row of carets after each error: drop those, and the
    # position in its standard input
    chosen = [re.sub(r"^/dev/stdin:[\d:-]+:\s*", "", ln) for ln in chosen if set(ln) - set("^~ ")]
    msg = "; ".join(dict.fromkeys(chosen[:3])) or "failed"
    return msg if len(msg) < 400 else msg[:400] + "..."
