"""Whether this kernel offers kTLS: detected from /proc, never assumed.

kTLS (the `tls` upper-layer protocol) would let the kernel hold the record keys, so a moved
socket keeps them and splice(2) works again. Baton has no kTLS path yet; this only reports
whether one could exist here. Loading the module is the administrator's decision
(`modprobe tls`), so nothing here tries it.
"""

from __future__ import annotations

ULP_LIST = "/proc/sys/net/ipv4/tcp_available_ulp"


def available_ulps(path: str = ULP_LIST) -> frozenset[str]:
    try:
        with open(path) as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def ktls_available(path: str = ULP_LIST) -> bool:
    return "tls" in available_ulps(path)


def ktls_status(path: str = ULP_LIST) -> str:
    """One line for logs and `baton status`: what the kernel offers."""
    ulps = available_ulps(path)
    if "tls" in ulps:
        return "kTLS available (kernel ULP 'tls'); not used yet: records are protected in user space"
    listed = ", ".join(sorted(ulps)) or "none"
    return f"kTLS unavailable (ULPs offered: {listed}); records are protected in user space"
