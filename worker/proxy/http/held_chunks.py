"""Body chunks held in order, kept as the empty tuple until a first chunk comes.

A stream holds a request body that arrives before its router takes over (stream.held_body),
the filters' body hooks hold one behind a stopped head (body_filters.py) and a router holds one
for a retry (router.body). Most requests have no body, so none of these starts as a list: each
is () until its first chunk, which makes it a list. Every place that adds a chunk goes through
`with_chunk`, so none can append to the tuple (a missed place did once: review R2, finding 1,
an AttributeError that dropped the connection).
"""

from __future__ import annotations


def with_chunk(chunks, data) -> list:
    """`chunks` with `data` at its end: the same list once there is one, a new list while it
    is still the empty tuple. Callers store the answer back."""
    if chunks:
        chunks.append(data)
        return chunks
    return [data]
