"""The stand-in model (cookbook.sandbox.model), driven by the official `openai` client.

Every test talks to a real sandbox process over HTTP, as the AI examples do, except the rule
matching table at the end, which calls `complete` directly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from cookbook import catalog, clients
from cookbook.sandbox import SandboxRecords
from cookbook.sandbox.model import ChatRequest, Script, complete, load_script, parse_script
from cookbook.stack import sandbox_process, stack_for, url_of

WEATHER_SCRIPT = """
[[rules]]
name = "ask for the weather"
when = { last_user_contains = "weather", tool_offered = "get_weather", last_message_role = "user" }
reply = { tool_calls = [{ name = "get_weather", arguments = { city = "Paris" } }] }

[[rules]]
name = "report it"
when = { last_message_role = "tool", tool_result_contains = "sunny" }
reply = { content = "Pack sunglasses: it is {last_tool_result}." }

[[rules]]
when = { system_contains = "echo" }
reply = { content = "You said: {last_user}" }
"""

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


class Sandbox:
    def __init__(self, url: str, records: SandboxRecords) -> None:
        self.url = url
        self.records = records

    def client(self, **options: Any) -> openai.OpenAI:
        # As the examples build it: retries belong to Resonate's retry policy, not the client.
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="any-key", max_retries=0, **options)

    def load(self, script: str) -> None:
        response = clients.put(f"{self.url}/_admin/model/script", content=script)
        assert response.status_code == 200, response.text

    def add_fault(self, **spec: Any) -> None:
        response = clients.post(f"{self.url}/_admin/faults", json=spec)
        assert response.status_code == 201, response.text

    def billed(self, key_prefix: str) -> list[dict[str, Any]]:
        return [
            {"key": e.idempotency_key, "model": e.response["model"], **e.response["usage"]}
            for e in self.records.effects(key_prefix)
            if (e.provider, e.action) == ("model", "complete")
        ]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    db = tmp_path_factory.mktemp("model") / "sandbox.db"
    with sandbox_process(db) as process:
        yield Sandbox(url_of(process), SandboxRecords(db))


@pytest.fixture
def model(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The module's sandbox with the weather script loaded and no faults armed."""
    sandbox.load(WEATHER_SCRIPT)
    yield sandbox
    clients.delete(f"{sandbox.url}/_admin/faults")


def ask(
    client: openai.OpenAI, text: str, key: str | None = None, **options: Any
) -> openai.types.chat.ChatCompletion:
    headers = {"Idempotency-Key": key} if key else {}
    completion: openai.types.chat.ChatCompletion = client.chat.completions.create(
        model="stand-in-1",
        messages=[{"role": "user", "content": text}],
        extra_headers=headers,
        **options,
    )
    return completion


def test_a_scripted_reply_substitutes_the_last_user_message(model: Sandbox) -> None:
    completion = model.client().chat.completions.create(
        model="stand-in-1",
        messages=[
            {"role": "system", "content": "You ECHO."},
            {"role": "user", "content": "hello there"},
        ],
    )

    assert completion.object == "chat.completion"
    assert completion.model == "stand-in-1"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == "You said: hello there"


def test_a_tool_call_round_trip(model: Sandbox) -> None:
    client = model.client()
    messages: list[Any] = [{"role": "user", "content": "What is the weather like?"}]

    asked = client.chat.completions.create(
        model="stand-in-1", messages=messages, tools=[WEATHER_TOOL]
    )
    choice = asked.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24°C"},
    ]
    answered = client.chat.completions.create(
        model="stand-in-1", messages=messages, tools=[WEATHER_TOOL]
    )

    assert answered.choices[0].finish_reason == "stop"
    assert answered.choices[0].message.content == "Pack sunglasses: it is sunny, 24°C."


def test_a_tool_is_not_called_unless_offered(model: Sandbox) -> None:
    model.load(
        '[[rules]]\nwhen = { last_user_contains = "weather" }\n'
        'reply = { tool_calls = [{ name = "get_weather" }] }\n'
        '[[rules]]\nreply = { content = "no tool for that" }\n'
    )
    client = model.client()

    def answer(**options: Any) -> str | None:
        message = ask(client, "What is the weather like?", **options).choices[0].message
        return message.content if message.tool_calls is None else message.tool_calls[0].id

    assert answer() == "no tool for that"
    assert answer(tools=[WEATHER_TOOL], tool_choice="none") == "no tool for that"
    assert (answer(tools=[WEATHER_TOOL]) or "").startswith("call_")


def test_the_default_reply_is_labelled_and_quotes_the_user(model: Sandbox) -> None:
    completion = ask(model.client(), "Tell me about durable execution, at length please.")

    content = completion.choices[0].message.content
    assert content is not None
    assert content.startswith("[stand-in model] ")
    assert '"Tell me about durable execution, at length please."' in content


def test_the_same_request_gets_the_same_bytes(model: Sandbox) -> None:
    client = model.client().chat.completions.with_raw_response

    def raw(text: str) -> bytes:
        messages: Any = [{"role": "user", "content": text}]
        response = client.create(model="stand-in-1", messages=messages, tools=[WEATHER_TOOL])
        return response.http_response.content

    assert raw("weather?") == raw("weather?")
    assert raw("Anything new?") == raw("Anything new?")
    assert raw("Anything new?") != raw("Anything else?")


def test_streaming_is_refused_with_400(model: Sandbox) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(model.client(), "hi", key="stream-1", stream=True)

    assert refused.value.param == "stream"
    assert model.billed("stream-1") == []


def test_more_than_one_choice_is_refused_with_400(model: Sandbox) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(model.client(), "hi", key="choices-1", n=2)

    assert refused.value.param == "n"
    assert model.billed("choices-1") == []


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "robot", "content": "hi"}], "messages[0].role"),
        ([], "messages"),
        ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}], "messages[1]"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
    ],
)
def test_a_bad_field_is_a_400_naming_it(model: Sandbox, messages: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        model.client().chat.completions.create(
            model="stand-in-1",
            messages=messages,
            extra_headers={"Idempotency-Key": f"bad:{param}:"},
        )

    assert refused.value.param == param
    assert param in refused.value.message
    assert model.records.effects(f"bad:{param}:") == []


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"model": "m", "messages": [], "temperature": NaN}', b"[]"],
    ids=["broken", "nan", "array"],
)
def test_a_body_that_is_no_json_object_is_a_400_and_recorded(model: Sandbox, raw: bytes) -> None:
    key = f"raw:{raw.decode()}:"

    response = clients.post(
        f"{model.url}/v1/chat/completions",
        content=raw,
        headers={"Authorization": "Bearer k", "Idempotency-Key": key},
    )

    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]
    [request] = model.records.requests(key)
    assert (request.status_code, request.body) == (400, raw.decode() if raw != b"[]" else [])
    assert model.records.effects(key) == []


def test_no_api_key_is_a_401(model: Sandbox) -> None:
    with pytest.raises(openai.AuthenticationError):
        model.client().chat.completions.create(
            model="stand-in-1",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"Authorization": openai.Omit()},
        )


def test_a_repeated_key_replays_without_billing_again(model: Sandbox) -> None:
    raw = model.client().chat.completions.with_raw_response
    messages: Any = [{"role": "user", "content": "Summarize the quarter."}]

    def create(key: str) -> Any:
        return raw.create(
            model="stand-in-1", messages=messages, extra_headers={"Idempotency-Key": key}
        )

    first, again = create("replay-1"), create("replay-1")

    assert first.headers.get("Idempotent-Replayed") is None
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.http_response.content == first.http_response.content
    assert [b["key"] for b in model.billed("replay-1")] == ["replay-1"]


def test_a_reused_key_with_another_body_is_a_409(model: Sandbox) -> None:
    client = model.client()
    ask(client, "first question", key="conflict-1")

    with pytest.raises(openai.ConflictError) as refused:
        ask(client, "another question", key="conflict-1")

    assert "conflict-1" in refused.value.message
    assert len(model.billed("conflict-1")) == 1


def test_without_a_key_every_completion_is_billed(model: Sandbox) -> None:
    client = model.client()
    before = len(model.records.effects())
    ask(client, "unkeyed")
    ask(client, "unkeyed")

    assert len(model.records.effects()) == before + 2


def test_billing_records_the_model_tokens_and_key(model: Sandbox) -> None:
    completion = model.client().chat.completions.create(
        model="gpt-imaginary",
        messages=[
            {"role": "system", "content": "Please echo."},
            {"role": "user", "content": "three little words"},
        ],
        extra_headers={"Idempotency-Key": "billing-1:step"},
    )

    # Whitespace-separated words: 2 + 3 in, "You said: three little words" out.
    expected = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    assert completion.usage is not None
    assert completion.usage.model_dump(exclude_none=True) == expected
    assert model.billed("billing-1") == [
        {"key": "billing-1:step", "model": "gpt-imaginary", **expected}
    ]
    [request] = model.records.requests("billing-1")
    assert (request.provider, request.action, request.status_code) == ("model", "complete", 200)


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
    ],
)
def test_an_injected_failure_raises_what_the_real_api_would(
    model: Sandbox, status: int, error: type[openai.APIStatusError], kind: str
) -> None:
    key = f"fault-{status}"
    model.add_fault(
        provider="model", action="complete", mode="fail_times", status=status, key_prefix=key
    )
    client = model.client()

    with pytest.raises(error) as failed:
        ask(client, "hi", key=key)
    assert failed.value.status_code == status
    assert isinstance(failed.value.body, dict)
    assert failed.value.body["type"] == kind
    assert model.billed(key) == []

    ask(client, "hi", key=key)  # the retry goes through, and is billed once
    assert len(model.billed(key)) == 1


def test_latency_past_the_client_timeout_is_a_timeout_and_may_have_landed(
    model: Sandbox,
) -> None:
    model.add_fault(
        provider="model", action="complete", mode="latency", latency_ms=1500, key_prefix="slow-1"
    )

    with pytest.raises(openai.APITimeoutError):
        ask(model.client(timeout=0.3), "hi", key="slow-1")
    # The request went on without its caller, as at a real provider: the outcome may have
    # landed. A retry with the same key is answered, and whichever of the two is billed first,
    # the other replays it.
    ask(model.client(timeout=30), "hi", key="slow-1")

    assert len(model.billed("slow-1")) == 1
    assert len(model.records.requests("slow-1")) == 2


def test_models_lists_the_default_and_the_scripted_names(model: Sandbox) -> None:
    model.load('[[rules]]\nwhen = { model = "writer-1" }\nreply = { content = "x" }\n')

    names = [m.id for m in model.client().models.list()]

    assert names == ["stand-in-1", "writer-1"]


def test_a_script_is_replaced_through_the_admin_endpoint(model: Sandbox) -> None:
    client = model.client()
    model.load('[[rules]]\nreply = { content = "version one" }\n')
    assert ask(client, "hi").choices[0].message.content == "version one"

    model.load('[[rules]]\nreply = { content = "version two" }\n')
    assert ask(client, "hi").choices[0].message.content == "version two"


def test_a_bad_script_is_refused_naming_the_field(model: Sandbox) -> None:
    model.load('[[rules]]\nreply = { content = "kept" }\n')
    bad = '[[rules]]\nwhen = { tool_ofered = "x" }\nreply = { content = "y" }\n'

    response = clients.put(f"{model.url}/_admin/model/script", content=bad)

    assert response.status_code == 400
    assert "rules[0].when.tool_ofered" in response.json()["error"]["message"]
    assert ask(model.client(), "hi").choices[0].message.content == "kept"


def test_load_script_names_the_file_of_a_bad_script(model: Sandbox, tmp_path: Path) -> None:
    script = tmp_path / "model.toml"
    script.write_text('[[rules]]\nreply = { content = "a", tool_calls = [{ name = "t" }] }\n')

    with pytest.raises(ValueError, match=r"model.toml: .*rules\[0\]\.reply: .*either content"):
        load_script(model.url, script)


def test_the_sandbox_loads_a_script_given_on_its_command_line(tmp_path: Path) -> None:
    script = tmp_path / "script.toml"
    script.write_text('[[rules]]\nreply = { content = "from the command line" }\n')

    with sandbox_process(tmp_path / "sandbox.db", model_script=script) as process:
        client = Sandbox(url_of(process), SandboxRecords(tmp_path / "sandbox.db")).client()
        assert ask(client, "hi").choices[0].message.content == "from the command line"


def test_the_sandbox_refuses_to_start_with_a_bad_script(tmp_path: Path) -> None:
    script = tmp_path / "script.toml"
    script.write_text("[[rules]]\nreply = {}\n")
    argv = [sys.executable, "-m", "cookbook.sandbox", "--model-script", str(script)]
    argv += ["--db", str(tmp_path / "sandbox.db")]

    finished = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    assert finished.returncode == 2
    assert "rules[0].reply" in finished.stderr


def test_a_kill_switch_fires_after_a_billed_completion(model: Sandbox) -> None:
    with subprocess.Popen(["sleep", "60"]) as victim:
        try:
            switch = {"provider": "model", "action": "complete", "pid": victim.pid}
            response = clients.post(f"{model.url}/_admin/kill-switches", json=switch)
            assert response.status_code == 201
            ask(model.client(), "hi", key="kill-1")
            assert victim.wait(timeout=10) == -9
        finally:
            victim.kill()


# --- the cookbook's side: the example's table, the stack, the environment -----------------

PYPROJECT = """
[tool.cookbook]
worker = "agent.worker"
group = "agent"
services = {services}
{model}
"""


def example_at(tmp_path: Path, services: str, model: str = "") -> catalog.Example:
    folder = tmp_path / "agent"
    folder.mkdir(exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(services=services, model=model))
    return catalog.load_example(folder)


def test_the_model_table_names_a_script_in_the_examples_folder(tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "stand-in-model.toml").write_text(
        '[[rules]]\nreply = { content = "from the example" }\n'
    )
    example = example_at(
        tmp_path, '["sandbox", "model"]', '[tool.cookbook.model]\nscript = "stand-in-model.toml"'
    )
    assert example.model_script == tmp_path / "agent" / "stand-in-model.toml"

    with stack_for(
        example.services, model_script=example.model_script, environ={}, workdir=tmp_path
    ) as stack:
        env = stack.env()
        client = openai.OpenAI(
            base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0
        )
        completion = client.chat.completions.create(
            model=env["OPENAI_MODEL"], messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.choices[0].message.content == "from the example"


def test_the_crash_harness_stack_serves_the_model_with_the_examples_script(
    tmp_path: Path,
) -> None:
    from cookbook.crash.harness import harness_stack

    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "m.toml").write_text("")
    example = example_at(
        tmp_path, '["sandbox", "model"]', '[tool.cookbook.model]\nscript = "m.toml"'
    )

    stack = harness_stack(example)

    assert (stack.model, stack.model_script) == (True, tmp_path / "agent" / "m.toml")


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ('[tool.cookbook.model]\nscript = "../x.toml"', "must be a .toml file inside"),
        ('[tool.cookbook.model]\nscript = "missing.toml"', "no such file missing.toml"),
        ("[tool.cookbook.model]\nscrip = 'x.toml'", "model].scrip: unknown key"),
    ],
)
def test_a_bad_model_table_is_refused(tmp_path: Path, model: str, problem: str) -> None:
    with pytest.raises(catalog.CatalogError, match=problem.replace("[", r"\[")):
        example_at(tmp_path, '["sandbox", "model"]', model)


def test_the_model_service_needs_the_sandbox_and_the_script_needs_the_service() -> None:
    assert catalog.validate({"worker": "w", "group": "g", "services": ["model"]}) == [
        "[tool.cookbook].services: 'model' is served by the sandbox: list 'sandbox' too"
    ]
    assert catalog.validate(
        {"worker": "w", "group": "g", "services": ["sandbox"], "model": {"script": "m.toml"}}
    ) == ["[tool.cookbook.model]: a model script, but 'model' is not in services"]


def test_the_model_service_sets_the_openai_environment(tmp_path: Path) -> None:
    with stack_for(("sandbox", "model"), environ={}, workdir=tmp_path) as stack:
        env = stack.env()
    assert env["OPENAI_BASE_URL"] == f"{stack.provider_url}/v1"
    assert env["OPENAI_API_KEY"] == "stand-in-key"
    assert env["OPENAI_MODEL"] == "stand-in-1"


def test_a_provider_set_in_the_environment_is_kept(tmp_path: Path) -> None:
    real = {
        "OPENAI_BASE_URL": "https://api.openai.com/v1",
        "OPENAI_API_KEY": "sk-real",
        "OPENAI_MODEL": "gpt-real",
    }
    with stack_for(("sandbox", "model"), environ=real, workdir=tmp_path) as stack:
        env = stack.env()
    assert {name: env[name] for name in real} == real


def test_without_the_model_service_there_is_no_openai_environment(tmp_path: Path) -> None:
    with stack_for(("sandbox",), environ={}, workdir=tmp_path) as stack:
        env = stack.env()
    assert not [name for name in env if name.startswith("OPENAI_")]


# --- rule matching, one condition at a time ------------------------------------------------


def conversation(**overrides: Any) -> ChatRequest:
    body: dict[str, Any] = {
        "model": "stand-in-1",
        "messages": [
            {"role": "system", "content": "You are the Writer."},
            {"role": "user", "content": "Draft the Report"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "search", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Three Sources found"},
        ],
        "tools": [{"type": "function", "function": {"name": "search"}}],
    }
    return ChatRequest.model_validate(body | overrides)


@pytest.mark.parametrize(
    ("condition", "holds", "fails"),
    [
        ({"model": "STAND-IN"}, {}, {"model": "gpt-4o"}),
        ({"system_contains": "writer"}, {}, {"messages": [{"role": "user", "content": "x"}]}),
        ({"last_user_contains": "report"}, {}, {"messages": [{"role": "user", "content": "x"}]}),
        ({"last_message_role": "tool"}, {}, {"messages": [{"role": "user", "content": "x"}]}),
        ({"any_message_contains": "sources"}, {}, {"messages": [{"role": "user", "content": "x"}]}),
        ({"tool_offered": "search"}, {}, {"tools": None}),
        ({"tool_result_contains": "three"}, {}, {"messages": [{"role": "user", "content": "x"}]}),
        ({"assistant_turns": 1}, {}, {"messages": [{"role": "user", "content": "x"}]}),
        ({"assistant_turns": 0}, {"messages": [{"role": "user", "content": "x"}]}, {}),
    ],
)
def test_each_condition_selects_its_rule(
    condition: dict[str, Any], holds: dict[str, Any], fails: dict[str, Any]
) -> None:
    script = Script.model_validate(
        {"rules": [{"when": condition, "reply": {"content": "matched"}}]}
    )

    def reply(request: ChatRequest) -> Any:
        return complete(script, request, "0" * 64)[0]["choices"][0]["message"]["content"]

    assert reply(conversation(**holds)) == "matched"
    assert reply(conversation(**fails)) != "matched"


def test_the_first_matching_rule_answers() -> None:
    script = parse_script(
        textwrap.dedent("""
        [[rules]]
        when = { last_user_contains = "nothing like this" }
        reply = { content = "first" }
        [[rules]]
        when = { last_user_contains = "draft" }
        reply = { content = "second" }
        [[rules]]
        reply = { content = "third" }
        """)
    )

    completion, rule = complete(script, conversation(), "0" * 64)

    assert completion["choices"][0]["message"]["content"] == "second"
    assert rule == "rules[1]"  # how the sandbox's narration names an unnamed rule
