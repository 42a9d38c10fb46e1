"""route_rewrite.compiled_steps: a plan's header mutations written out as one function do
what stream.py's _apply_mutations does with the same steps, for every kind of step, constant
and %-operator values, empty values with and without keep_empty_value, headers absent, present
and repeated."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from baton.worker.codecs.message import Headers
from baton.worker.proxy.http.route_rewrite import (ADD_IF_ABSENT, APPEND, OVERWRITE, REMOVE,
                                                  compiled_steps, mutation_plan, mutation_steps)
from baton.worker.proxy.http.stream import Stream

ACTIONS = ["APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD",
           "OVERWRITE_IF_EXISTS"]
VALUES = ["v", "", "%REQ(x-a)%", "%REQ(x-none)%"]     # constant, empty, rendered, rendered empty
HEADERS = [[], [("x-h", "0")], [("x-h", "0"), ("x-b", "1"), ("x-h", "2")]]


def _render(template, info):
    """A stand-in for render_header_value: x-a is "A", any other header empty."""
    return {"%REQ(x-a)%": "A", "%REQ(x-none)%": ""}.get(template, template)


def _by_the_loop(headers, steps):
    """Envoy's semantics, one step at a time (what stream.py ran before the plans were
    compiled): every old value of an OVERWRITE goes and the new one comes last; no empty
    value is added unless keep_empty_value."""
    for kind, name, template, dynamic, keep_empty in steps:
        if kind == REMOVE:
            headers.remove(name)
            continue
        value = _render(template, None) if dynamic else template
        if value == "" and not keep_empty:
            continue
        if kind == APPEND:
            headers.add(name, value)
        elif kind == ADD_IF_ABSENT:
            if name not in headers:
                headers.add(name, value)
        elif kind == OVERWRITE:
            headers.remove(name)
            headers.add(name, value)
        elif headers.remove(name):          # OVERWRITE_IF_EXISTS
            headers.add(name, value)


def test_a_route_runs_its_compiled_plan():
    """A route's plans are MutationPlans (their steps, and the function made of them), and the
    stream runs that function."""
    spec = {"remove": ["x-h"], "add": [("x-c", "c", "ADD_IF_ABSENT", False)]}
    plan = mutation_plan(mutation_steps(spec))
    headers = Headers([("x-h", "0")])
    stream = SimpleNamespace(hcm=SimpleNamespace(render_header_value=_render), info=None)
    Stream._apply_mutations(stream, headers, plan)
    assert headers.items == [("x-c", "c")]
    assert plan == mutation_steps(spec)


def test_compiled_steps_do_what_the_loop_does():
    specs = [{"remove": [], "add": [("x-h", value, action, keep)]}
             for action, value, keep in itertools.product(ACTIONS, VALUES, (False, True))]
    specs += [{"remove": ["x-h"], "add": [("x-h", "n", "APPEND_IF_EXISTS_OR_ADD", False),
                                         ("x-b", "%REQ(x-a)%", "OVERWRITE_IF_EXISTS", False),
                                         ("x-c", "c", "ADD_IF_ABSENT", False)]},
              {"remove": ["x-none", "x-b"], "add": []}, {"remove": [], "add": []}]
    for spec, items in itertools.product(specs, HEADERS):
        steps = mutation_steps(spec) if spec["remove"] or spec["add"] else ()
        expected, got = Headers(list(items)), Headers(list(items))
        _by_the_loop(expected, steps)
        compiled_steps(steps)(got, None, _render)
        assert got.items == expected.items, (spec, items)


def test_a_plan_of_fixed_appends_gives_its_pairs():
    """A plan whose every step appends a fixed value carries the pairs its function appends
    (the router extends the response's list with them, no call); any other plan has none."""
    for spec, items in itertools.product(
            [{"remove": [], "add": [("x-a", "1", "APPEND_IF_EXISTS_OR_ADD", False),
                                    ("x-e", "", "APPEND_IF_EXISTS_OR_ADD", False),
                                    ("x-k", "", "APPEND_IF_EXISTS_OR_ADD", True),
                                    ("x-a", "2", "APPEND_IF_EXISTS_OR_ADD", False)]},
             {"remove": [], "add": [("x-e", "", "APPEND_IF_EXISTS_OR_ADD", False)]}], HEADERS):
        plan = mutation_plan(mutation_steps(spec))
        expected, got = Headers(list(items)), Headers(list(items))
        plan.apply(expected, None, _render)
        got.items.extend(plan.pairs)
        assert got.items == expected.items, (spec, items)
    for spec in [{"remove": ["x-h"], "add": [("x-a", "1", "APPEND_IF_EXISTS_OR_ADD", False)]},
                 {"remove": [], "add": [("x-a", "%REQ(x-a)%", "APPEND_IF_EXISTS_OR_ADD", False)]},
                 {"remove": [], "add": [("x-a", "1", "ADD_IF_ABSENT", False)]}]:
        assert mutation_plan(mutation_steps(spec)).pairs is None, spec
