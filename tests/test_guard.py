"""guard: the config section, and the step on its own (a stub call_next): allow, cap, and hostile JSON bodies."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import load_config
from gateway.config_guard import GuardConfig
from gateway.errors import BadRequest
from gateway.pipeline.build import _names_clients
from gateway.pipeline.endpoint import ForwardEndpoint
from gateway.pipeline.guard import Rules, guard, parse_object
from gateway.pipeline.values import Answer, OutRequest
from gateway.units import Rate
from gateway.yamlsource import ConfigError

UPSTREAM = """\
upstreams:
  openai:
    url: https://api.openai.com/v1
forwards:
  chat:
    upstream: openai
    path: /chat/completions
    methods: [POST]
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages then name "config.yaml"


def guard_of(tmp_path: Path, guard_yaml: str) -> GuardConfig | None:
    (tmp_path / "config.yaml").write_text(UPSTREAM + "    guard:\n" + guard_yaml)
    return load_config(tmp_path / "config.yaml", environ={"MODEL": "gpt-4.1-mini"}).forwards[0].guard


def problems_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "config.yaml", environ={})
    return [str(p) for p in info.value.problems]


# -- config ------------------------------------------------------------------------------------------------------


def test_the_spec_example_loads(tmp_path: Path) -> None:
    spec = guard_of(tmp_path, """\
      allow: { model: [gpt-4o-mini, "${MODEL}"] }
      cap:   { max_tokens: 512, max_completion_tokens: 512, n: 1, temperature: 1.5 }
      budget: 200000/day
""")
    assert spec == GuardConfig(
        allow=(("model", ("gpt-4o-mini", "gpt-4.1-mini")),),
        cap=(("max_tokens", 512), ("max_completion_tokens", 512), ("n", 1), ("temperature", 1.5)),
        budget=Rate(200000, 86400.0),
    )


def test_a_forward_without_guard_has_none(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(UPSTREAM)
    assert load_config(tmp_path / "config.yaml", environ={}).forwards[0].guard is None


@pytest.mark.parametrize(("guard_yaml", "problem"), [
    ("      allow: { model: gpt-4o }\n",
     "config.yaml:10: forwards.chat.guard.allow.model: expected a list of the values allowed, e.g. [gpt-4o-mini], "
     "got 'gpt-4o'"),
    ("      allow: { model: [] }\n",
     "config.yaml:10: forwards.chat.guard.allow.model: expected a list of the values allowed, e.g. [gpt-4o-mini], "
     "got a list"),
    ("      allow: { model: [[a]] }\n",
     "config.yaml:10: forwards.chat.guard.allow.model[0]: expected a string, number, true, false or null, got a list"),
    ("      allow: [model]\n",
     "config.yaml:10: forwards.chat.guard.allow: expected a mapping of JSON fields to lists of allowed values, got "
     "a list"),
    ("      cap: { max_tokens: -1 }\n",
     "config.yaml:10: forwards.chat.guard.cap.max_tokens: expected a whole number >= 1, got -1"),
    ("      cap: { max_tokens: 1.5 }\n",
     "config.yaml:10: forwards.chat.guard.cap.max_tokens: expected a whole number >= 1, got 1.5"),
    ("      cap: { n: true }\n", "config.yaml:10: forwards.chat.guard.cap.n: expected a whole number >= 1, got True"),
    ("      cap: { max_tokens: '512' }\n",
     "config.yaml:10: forwards.chat.guard.cap.max_tokens: expected a whole number >= 1, got '512'"),
    ("      cap: { temperature: .nan }\n",
     "config.yaml:10: forwards.chat.guard.cap.temperature: expected a number >= 0, got nan"),
    ("      cap: { max_tokens: 512 }\n      budget: 5/week\n",
     "config.yaml:11: forwards.chat.guard.budget: '5/week': expected a budget like 200000/day (N/minute, N/hour or "
     "N/day, N >= 1)"),
    ("      cap: { max_tokens: 512 }\n      budget: 0/day\n",
     "config.yaml:11: forwards.chat.guard.budget: '0/day': expected a budget like 200000/day (N/minute, N/hour or "
     "N/day, N >= 1)"),
    ("      budget: 1000/day\n",
     "config.yaml:10: forwards.chat.guard.budget: a budget needs a cap on the tokens a request may produce, or its "
     "largest cost is unknown: add cap: {max_tokens: 512} (or max_completion_tokens, max_output_tokens)"),
    ("      cap: { n: 1 }\n      budget: 1000/day\n",
     "config.yaml:11: forwards.chat.guard.budget: a budget needs a cap on the tokens a request may produce, or its "
     "largest cost is unknown: add cap: {max_tokens: 512} (or max_completion_tokens, max_output_tokens)"),
    ("      alow: { model: [a] }\n",
     "config.yaml:10: forwards.chat.guard.alow: unknown key 'alow': did you mean 'allow'?"),
])
def test_config_mistakes_are_one_line_each(tmp_path: Path, guard_yaml: str, problem: str) -> None:
    assert problems_of(tmp_path, UPSTREAM + "    guard:\n" + guard_yaml) == [problem]


def test_a_guard_needs_methods_with_a_body(tmp_path: Path) -> None:
    text = UPSTREAM.replace("methods: [POST]", "methods: [GET, POST]") + "    guard: { cap: { max_tokens: 5 } }\n"
    assert problems_of(tmp_path, text) == [
        "config.yaml:9: forwards.chat.guard: a guard checks JSON request bodies, which GET requests do not carry: "
        "give this forward methods: [POST] (or put GET on another forward)"]


def test_a_websocket_forward_takes_no_guard(tmp_path: Path) -> None:
    text = UPSTREAM.replace("    path: /chat/completions\n    methods: [POST]\n", "    websocket: true\n") + \
        "    guard: { cap: { max_tokens: 5 } }\n"
    assert problems_of(tmp_path, text) == [
        "config.yaml:8: forwards.chat.guard: guard does not apply to a WebSocket forward: remove it"]


# -- allow and cap -------------------------------------------------------------------------------------------------


def rules(allow: dict[str, list[Any]] | None = None, cap: dict[str, int | float] | None = None) -> Rules:
    return Rules(GuardConfig(tuple((k, tuple(v)) for k, v in (allow or {}).items()), tuple((cap or {}).items())))


MODELS = {"model": ["gpt-4o-mini", "gpt-4.1-mini"]}


@pytest.mark.parametrize("body", [{"model": "gpt-4o-mini"}, {"model": "gpt-4.1-mini", "x": 1}])
def test_allowed_values_pass(body: dict[str, Any]) -> None:
    data = dict(body)
    rules(MODELS)(data)
    assert data == body


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "gpt-4o"}, "model 'gpt-4o' is not allowed here: use one of gpt-4o-mini, gpt-4.1-mini"),
    ({"model": "GPT-4o-mini"}, "model 'GPT-4o-mini' is not allowed here: use one of gpt-4o-mini, gpt-4.1-mini"),
    ({"model": ["gpt-4o-mini"]}, "model an array is not allowed here: use one of gpt-4o-mini, gpt-4.1-mini"),
    ({"model": {"name": "gpt-4o-mini"}}, "model an object is not allowed here: use one of gpt-4o-mini, gpt-4.1-mini"),
    ({}, "model (missing) is not allowed here: use one of gpt-4o-mini, gpt-4.1-mini"),
    ({"model": None}, "model null is not allowed here: use one of gpt-4o-mini, gpt-4.1-mini"),
    ({"model": "o1-pro" + "x" * 10_000},
     "model 'o1-proxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... is not allowed here: use one of gpt-4o-mini, gpt-4.1-mini"),
])
def test_other_values_are_refused_naming_the_field_and_the_allowed_values(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        rules(MODELS)(body)
    assert info.value.message == message
    assert len(info.value.message) < 200  # a huge value is never repeated


@pytest.mark.parametrize(("allowed", "value", "ok"), [
    ([1], 1, True), ([1], 1.0, True), ([1], True, False), ([True], 1, False), ([True], True, True),
    (["1"], 1, False), ([1], "1", False), ([None], None, True), ([None, "auto"], "auto", True),
])
def test_allow_compares_kinds_strictly(allowed: list[Any], value: Any, ok: bool) -> None:
    check = rules({"f": allowed})
    if ok:
        check({"f": value})
    else:
        with pytest.raises(BadRequest):
            check({"f": value})


def test_null_in_the_list_lets_the_field_be_left_out() -> None:
    rules({"service_tier": ["default", None]})({})
    with pytest.raises(BadRequest, match="service_tier \\(missing\\)"):
        rules({"service_tier": ["default"]})({})


CAP = {"max_tokens": 512, "n": 1}


@pytest.mark.parametrize(("body", "sent"), [
    ({}, {"max_tokens": 512, "n": 1}),  # set when absent
    ({"max_tokens": 100000, "n": 8}, {"max_tokens": 512, "n": 1}),  # lowered when higher
    ({"max_tokens": 100, "n": 1}, {"max_tokens": 100, "n": 1}),  # kept when lower
    ({"max_tokens": None}, {"max_tokens": 512, "n": 1}),  # null is "no limit" to OpenAI: capped as absent
    ({"max_tokens": 0}, {"max_tokens": 0, "n": 1}),
    # one family: the other spelling is capped too, and never added beside it (OpenAI refuses both at once)
    ({"max_completion_tokens": 100000}, {"max_completion_tokens": 512, "n": 1}),
    ({"max_output_tokens": 100000}, {"max_output_tokens": 512, "n": 1}),
    ({"max_completion_tokens": 20, "max_tokens": 100000}, {"max_completion_tokens": 20, "max_tokens": 512, "n": 1}),
    ({"max_completion_tokens": 100000, "max_tokens": None}, {"max_completion_tokens": 512, "n": 1}),
])
def test_caps_set_and_lower(body: dict[str, Any], sent: dict[str, Any]) -> None:
    rules(cap=CAP)(body)
    assert body == sent


def test_with_both_spellings_configured_the_lowest_caps_and_the_current_spelling_is_set() -> None:
    check = rules(cap={"max_tokens": 512, "max_completion_tokens": 256})
    body: dict[str, Any] = {}
    check(body)
    assert body == {"max_completion_tokens": 256}  # OpenAI takes it for every model; max_tokens not for o-series
    body = {"max_tokens": 100000}
    check(body)
    assert body == {"max_tokens": 256}


def test_other_numeric_caps_take_floats() -> None:
    body: dict[str, Any] = {"temperature": 1.9}
    rules(cap={"temperature": 1.0})(body)
    assert body == {"temperature": 1.0}


@pytest.mark.parametrize(("body", "message"), [
    ({"max_tokens": "100000"}, "max_tokens must be a whole number >= 0, not '100000'"),
    ({"max_completion_tokens": "100000"}, "max_completion_tokens must be a whole number >= 0, not '100000'"),
    ({"max_tokens": -1}, "max_tokens must be a whole number >= 0, not -1"),
    ({"max_tokens": True}, "max_tokens must be a whole number >= 0, not true"),
    ({"max_tokens": 1e9}, "max_tokens must be a whole number >= 0, not 1000000000.0"),
    ({"max_tokens": [1]}, "max_tokens must be a whole number >= 0, not an array"),
    ({"max_tokens": {"a": 1}}, "max_tokens must be a whole number >= 0, not an object"),
    ({"n": "2"}, "n must be a whole number >= 0, not '2'"),
    ({"temperature": "hot"}, "temperature must be a number >= 0, not 'hot'"),
])
def test_capped_fields_that_are_not_numbers_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        rules(cap={**CAP, "temperature": 1})(body)
    assert info.value.message == message


# -- hostile bodies ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    (b"", "the body is not valid JSON: Expecting value at line 1 column 1"),
    (b"{", "the body is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    (b"[]", "the body must be a JSON object, not an array"),
    (b'"hi"', "the body must be a JSON object, not a string"),
    (b"3", "the body must be a JSON object, not a number"),
    (b"null", "the body must be a JSON object, not null"),
    (b'{"model": "a", "model": "b"}', "the key 'model' appears twice in one JSON object: send it once"),
    (b'{"m": {"x": 1, "x": 2}}', "the key 'x' appears twice in one JSON object: send it once"),
    (b'{"max_tokens": NaN}', "NaN is not a JSON number: send a finite number"),
    (b'{"max_tokens": Infinity}', "Infinity is not a JSON number: send a finite number"),
    (b'{"max_tokens": -Infinity}', "-Infinity is not a JSON number: send a finite number"),
    (b'{"max_tokens": 1e400}', "the number '1e400' is too large"),
    (b'{"max_tokens": ' + b"9" * 5000 + b"}", "the body is not valid JSON"),
    ('{"model": "caf\u00e9"}'.encode("latin-1"), "the body must be JSON encoded as UTF-8"),
    ('{"model": "a"}'.encode("utf-16"), "the body must be JSON encoded as UTF-8"),
    (b'\xef\xbb\xbf{"model": "a"}', "the body is not valid JSON: Unexpected UTF-8 BOM (decode using utf-8-sig) at "
                                     "line 1 column 1"),
    (b"[" * 100_000 + b"]" * 100_000, "the JSON body is nested too deeply"),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "the JSON body is nested too deeply"),
])
def test_hostile_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_object(body)
    assert info.value.message == message


def test_a_json_object_passes() -> None:
    assert parse_object('{"model": "gpt-4o-mini", "messages": [{"content": "h\u00e9"}]}'.encode()) == \
        {"model": "gpt-4o-mini", "messages": [{"content": "h\u00e9"}]}


# -- the step with a stub upstream ---------------------------------------------------------------------------------


class Stub:
    def __init__(self) -> None:
        self.got: list[OutRequest] = []

    async def __call__(self, out: OutRequest) -> Answer:
        self.got.append(out)
        return Answer(200, CIMultiDict({"Content-Type": "application/json"}), b"{}")


def out_request(body: bytes | None, headers: dict[str, str] | None = None) -> OutRequest:
    extra = {"Content-Length": str(len(body or b"")), "X-Request-Id": "r1"}
    return OutRequest("POST", "https://api.example.com/v1/chat/completions",
                      CIMultiDictProxy(CIMultiDict(headers if headers is not None else
                                                   {"Content-Type": "application/json"})), body, extra)


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


async def test_the_checked_body_goes_on_with_its_own_length() -> None:
    step = guard(GuardConfig((("model", ("gpt-4o-mini",)),), (("max_tokens", 512),)), None, scope="chat", limit=1000)
    stub = Stub()
    body = b'{"model": "gpt-4o-mini", "max_tokens": 100000, "messages": []}'
    out = out_request(None)
    out.body = _chunks(body[:10], body[10:])  # as the client's body streams in
    await step(out, stub)
    [sent] = stub.got
    assert sent.body == b'{"model":"gpt-4o-mini","max_tokens":512,"messages":[]}'
    assert "Content-Length" not in sent.extra  # the client's length is not this body's: the client sets it
    assert sent.extra["X-Request-Id"] == "r1"
    assert "Content-Type" not in sent.extra  # the client's application/json goes on


async def test_a_body_without_content_type_goes_as_json() -> None:
    stub = Stub()
    await guard(GuardConfig(), None, scope="chat", limit=1000)(out_request(b"{}", headers={}), stub)
    assert stub.got[0].extra["Content-Type"] == "application/json"


@pytest.mark.parametrize(("content_type", "ok"), [
    ("application/json", True), ("application/json; charset=utf-8", True), ("Application/JSON;charset=UTF8", True),
    ("application/vnd.api+json", True), ("text/plain", False), ("application/x-www-form-urlencoded", False),
    ("application/json; charset=latin-1", False), ("application/json; charset=utf-16", False),
])
async def test_the_content_type_must_be_json_in_utf8(content_type: str, ok: bool) -> None:
    stub = Stub()
    step = guard(GuardConfig(), None, scope="chat", limit=1000)
    if ok:
        await step(out_request(b"{}", {"Content-Type": content_type}), stub)
        assert len(stub.got) == 1
    else:
        with pytest.raises(BadRequest):
            await step(out_request(b"{}", {"Content-Type": content_type}), stub)
        assert stub.got == []


async def test_a_lone_surrogate_cannot_go_upstream() -> None:
    stub = Stub()
    with pytest.raises(BadRequest, match="lone surrogate"):
        await guard(GuardConfig(), None, scope="chat", limit=1000)(out_request(b'{"a": "\\ud800"}'), stub)
    assert stub.got == []


async def test_refusals_never_reach_the_upstream() -> None:
    stub = Stub()
    step = guard(GuardConfig((("model", ("gpt-4o-mini",)),), (("max_tokens", 512),)), None, scope="chat", limit=1000)
    for body in (b'{"model": "gpt-4o"}', b'{"model": "gpt-4o-mini", "max_tokens": "9"}', b"[]", b"",
                 json.dumps({"model": "gpt-4o-mini", "max_tokens": 1}).encode() * 2):
        with pytest.raises(BadRequest):
            await step(out_request(body), stub)
    assert stub.got == []


def test_no_guard_no_step() -> None:
    assert guard(None, None, scope="chat", limit=1000) is None


async def test_two_content_types_are_refused() -> None:
    """The check would read the first, the upstream might read the last."""
    stub = Stub()
    out = out_request(b"{}")
    out.headers = CIMultiDictProxy(CIMultiDict([("Content-Type", "application/json"), ("Content-Type", "text/plain")]))
    with pytest.raises(BadRequest, match="send one Content-Type"):
        await guard(GuardConfig(), None, scope="chat", limit=1000)(out, stub)
    assert stub.got == []


def test_only_a_forward_with_a_budget_names_its_callers_for_it(tmp_path: Path) -> None:
    """identify runs where something reads who calls: a budgeted forward does, its unbudgeted neighbour does not
    (with no rate limit, per-user cache or access log), though both are in one config."""
    (tmp_path / "config.yaml").write_text(UPSTREAM + "    guard: { cap: { max_tokens: 100 }, budget: 1000/day }\n"
                                          "  models: { upstream: openai, path: /models }\n"
                                          "server: { access_log: false }\n")
    config = load_config(tmp_path / "config.yaml", environ={})
    res = SimpleNamespace(config=config)
    chat, models = (ForwardEndpoint(forward, config, "/api") for forward in config.forwards)
    assert (chat.budgeted, models.budgeted) == (True, False)
    assert _names_clients(chat, res) and not _names_clients(models, res)  # type: ignore[arg-type]
