"""What a route changes in a request or a local answer: its header mutations in Envoy's order,
and the helpers of host and path rewrites and of redirect URLs.

Header mutations and rewrites follow the order Envoy 1.40 applies them (checked with a live
Envoy): a weighted cluster's headers first, then route, virtual host and route config (least
specific last, so it wins), or route config, virtual host, route when
most_specific_header_mutations_wins; then host rewrite (adding x-envoy-original-host), then
path rewrite (adding x-envoy-original-path). routing.Route composes the levels.
"""

from __future__ import annotations

# The kinds of a header-mutation step (mutation_steps).
REMOVE, APPEND, ADD_IF_ABSENT, OVERWRITE, OVERWRITE_IF_EXISTS = range(5)
_KINDS = {"APPEND_IF_EXISTS_OR_ADD": APPEND, "ADD_IF_ABSENT": ADD_IF_ABSENT,
          "OVERWRITE_IF_EXISTS_OR_ADD": OVERWRITE, "OVERWRITE_IF_EXISTS": OVERWRITE_IF_EXISTS}


def mutation_steps(spec) -> tuple:
    """One level's translated {"remove", "add"} -> the steps a request runs, decided once
    per route, in Envoy's order within a level: removals, then overwrites and add-if-absent
    in config order, then appends (Envoy 1.40 defers appends to the end of the level).
    A step is (kind, name, template, dynamic, keep_empty): `dynamic` when the template has
    %-operators to render (else it is the value). An action Envoy does not have would change
    nothing: it is left out. stream.py's _apply_mutations runs them: REMOVE removes every
    value; the others skip an empty value unless keep_empty, then APPEND adds, ADD_IF_ABSENT
    adds when absent, OVERWRITE removes every value and adds the new one at the end (Envoy),
    OVERWRITE_IF_EXISTS does that only when one was there."""
    if not spec:
        return ()
    steps = [(REMOVE, name, None, False, False) for name in spec["remove"]]
    deferred = []
    for name, template, action, keep_empty in spec["add"]:
        kind = _KINDS.get(action)
        if kind is not None:
            (deferred if kind == APPEND else steps).append(
                (kind, name, template, "%" in template, keep_empty))
    return tuple(steps + deferred)


def _overwrite(headers, name, value):
    """Envoy's setReferenceKey: every `name` removed, the new one appended at the end."""
    headers.remove(name)
    headers.add(name, value)


def _port_start(host: str) -> int:
    """Index of the ':' of a port in a Host value, -1 if none (IPv6-aware)."""
    if host.startswith("["):
        end = host.rfind("]:")
        return end + 1 if end >= 0 else -1
    return host.rfind(":")


def _compose_uri(request, redirect) -> str:
    """Envoy's redirect URL: scheme, host, port and path, each from the redirect when it
    sets one, else from the request (Host port dropped when the scheme changes away from
    its default port, or when port_redirect replaces it)."""
    forwarded_proto = request.get("x-forwarded-proto") or request.scheme
    if redirect and redirect["scheme"]:
        scheme = redirect["scheme"]
    elif redirect and redirect["https"]:
        scheme = "https"
    else:
        scheme = forwarded_proto
    port = ""
    if redirect and redirect["port"]:
        port = f":{redirect['port']}"
        if redirect["host"]:
            host = redirect["host"]                      # as written, as Envoy does
        else:
            host = request.authority
            cut = _port_start(host)
            host = host if cut < 0 else host[:cut]
    elif redirect and redirect["host"]:
        host = redirect["host"]
    else:
        host = request.authority
        cut = _port_start(host)
        if cut >= 0 and scheme != forwarded_proto:
            request_port = host[cut:]
            if (forwarded_proto == "https" and request_port == ":443") or (
                    forwarded_proto == "http" and request_port == ":80"):
                host = host[:cut]
    path = request.path
    new_path = redirect["path"] if redirect else None
    path_has_query = False
    if new_path:
        path_has_query = "?" in new_path
        if not path_has_query:
            q = path.find("?")
            new_path = new_path + (path[q:] if q >= 0 else "")
        path = new_path
    if not path.startswith("/"):
        path = "/" + path
    if redirect and redirect["strip_query"] and not path_has_query:
        q = path.find("?")
        if q >= 0:
            path = path[:q]
    return f"{scheme}://{host}{port}{path}"


class MutationPlan(tuple):
    """A plan's steps (mutation_steps), with `apply(headers, info, render)`: the same steps
    written out as one function (compiled_steps), made once per route, and `names`: the
    header names it touches (the stream asks whether one is among them), and `pairs`: when
    every step appends a fixed value (a mesh route's response headers, typically), the pairs
    they append, in order, decided here: the caller extends the header list with them, no
    call made (else None: call apply)."""

    apply = None
    names = frozenset()
    pairs = None


def mutation_plan(steps) -> MutationPlan:
    plan = MutationPlan(steps)
    plan.apply = compiled_steps(plan)
    plan.names = frozenset(step[1] for step in steps)
    if all(kind == APPEND and not dynamic for kind, _, _, dynamic, _ in steps):
        # What compiled_steps writes for these steps: each pair appended, an empty value
        # left out unless keep_empty_value.
        plan.pairs = tuple((name, template) for _, name, template, _, keep_empty in steps
                           if template or keep_empty)
    return plan


def compiled_steps(steps):
    """A plan's steps (mutation_steps) as one function apply(headers, info, render) that runs
    them in order (Envoy's semantics: tests/unit/test_compiled_mutations.py), written out step
    by step as the access log's render is (formatter._generate): a constant value's pair is
    built once, an empty constant value without keep_empty is left out, and only a template
    with %-operators calls `render(template, info)` (the connection manager's
    render_header_value). Only names go into the source; header names, values and templates
    are default arguments."""
    params, lines = [], []
    for i, (kind, name, template, dynamic, keep_empty) in enumerate(steps):
        params.append(f"_n{i}=_steps[{i}][1]")
        if kind == REMOVE:
            # The scan written in place: a request seldom carries the header a route
            # removes, and then no call is made (Headers.remove scans the same way).
            lines += ["    for _k, _ in headers.items:", f"        if _k == _n{i}:",
                      f"            headers.remove(_n{i})", "            break"]
            continue
        if dynamic:
            params.append(f"_t{i}=_steps[{i}][2]")
            lines.append(f"    _v = render(_t{i}, info)")
            pad = "    "
            if not keep_empty:
                lines.append("    if _v:")
                pad = "        "
            pair = f"(_n{i}, _v)"
        elif template == "" and not keep_empty:
            continue                # Envoy adds no empty header unless keep_empty_value
        else:
            params.append(f"_p{i}=(_steps[{i}][1], _steps[{i}][2])")
            pad, pair = "    ", f"_p{i}"
        if kind == APPEND:
            lines.append(f"{pad}headers.items.append({pair})")
        elif kind == ADD_IF_ABSENT:
            lines += [f"{pad}if _n{i} not in headers:", f"{pad}    headers.items.append({pair})"]
        elif kind == OVERWRITE:
            lines += [f"{pad}headers.remove(_n{i})", f"{pad}headers.items.append({pair})"]
        else:                       # OVERWRITE_IF_EXISTS
            lines += [f"{pad}if headers.remove(_n{i}):", f"{pad}    headers.items.append({pair})"]
    source = (f"def apply(headers, info, render, {', '.join(params)}):\n"
              + "\n".join(lines or ["    pass"]) + "\n")
    namespace = {"_steps": steps}
    exec(compile(source, "<header mutations>", "exec"), namespace)  # noqa: S102
    return namespace["apply"]
