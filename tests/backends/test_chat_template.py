"""The sandboxed chat-template renderer, on the default model's real template and on edge cases."""

from __future__ import annotations

import pytest

from lokal.backends.base import ChatMessage, Tool, ToolCall
from lokal.backends.chat_template import ChatTemplate
from lokal.backends.errors import InvalidParameter
from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec


@pytest.fixture(scope="module")
def smollm_template() -> str:
    import llama_cpp

    path = ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path()
    llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    template = llama.metadata["tokenizer.chat_template"]
    assert isinstance(template, str)
    return template


def test_real_smollm2_template(smollm_template: str) -> None:
    out = ChatTemplate(smollm_template).render(
        [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    )
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_default_system_prompt_of_smollm2(smollm_template: str) -> None:
    out = ChatTemplate(smollm_template).render([ChatMessage("user", "Hi")])
    assert out.startswith("<|im_start|>system\n")
    assert out.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_no_generation_prompt(smollm_template: str) -> None:
    out = ChatTemplate(smollm_template).render([ChatMessage("user", "Hi")],
                                               add_generation_prompt=False)
    assert not out.endswith("<|im_start|>assistant\n")


def test_raise_exception_becomes_invalid_parameter() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}"
        "{% endif %}ok"
    )
    assert template.render([ChatMessage("user", "x")]) == "ok"
    with pytest.raises(InvalidParameter, match="first must be user"):
        template.render([ChatMessage("assistant", "x")])


def test_sandbox_blocks_python_internals() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidParameter):
        template.render([ChatMessage("user", "x")])


def test_tojson_bos_and_tool_call_arguments_as_mapping() -> None:
    template = ChatTemplate(
        "{{ bos_token }}{% if tools %}T{% endif %}{% for m in messages %}{% if m.tool_calls %}"
        "{{ m.tool_calls[0].function.arguments | tojson }}{% endif %}{% endfor %}",
        bos_token="<s>",
    )
    msg = ChatMessage("assistant", None, tool_calls=(ToolCall("c1", "f", '{"a": 1}'),))
    assert template.render([msg]) == '<s>{"a": 1}'


def test_fallback_template_is_chatml() -> None:
    template = ChatTemplate(None)
    assert template.is_fallback
    assert template.render([ChatMessage("user", "Hi")]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_syntax_error_is_reported_at_load() -> None:
    with pytest.raises(ValueError, match="invalid chat template"):
        ChatTemplate("{% for %}")


def test_tool_aware_template_gets_tools_and_raw_history() -> None:
    template = ChatTemplate("{% for t in tools %}{{ t.function.name }};{% endfor %}"
                            "{% for m in messages %}{{ m.role }}:{{ m.content }}|{% endfor %}")
    tool = Tool("get_time", parameters={})
    out = template.render([ChatMessage("tool", "12:00", tool_call_id="c1")], tools=[tool])
    assert out == "get_time;tool:12:00|"


def test_generic_tool_prompt_and_history_for_tool_unaware_template(smollm_template: str) -> None:
    tool = Tool("get_weather", "Weather in a city",
                {"type": "object", "properties": {"city": {"type": "string"}}})
    call = ToolCall("c1", "get_weather", '{"city": "Paris"}')
    out = ChatTemplate(smollm_template).render(
        [ChatMessage("user", "Weather in Paris?"),
         ChatMessage("assistant", None, tool_calls=(call,)),
         ChatMessage("tool", "sunny", tool_call_id="c1")],
        tools=[tool])
    assert out.startswith("<|im_start|>system\nYou can call functions")
    assert '"name": "get_weather"' in out and "Weather in a city" in out
    assert ('<|im_start|>assistant\n<tool_call>{"name": "get_weather", '
            '"arguments": {"city": "Paris"}}</tool_call><|im_end|>') in out
    assert '<|im_start|>user\n<tool_response id="c1">\nsunny\n</tool_response>' in out


ASK = ChatMessage("user", "Hi")


def test_continue_final_ends_at_the_prefill(smollm_template: str) -> None:
    template = ChatTemplate(smollm_template)
    out = template.render([ASK, ChatMessage("assistant", "Hello! How")], continue_final=True)
    # What a fresh turn would get, with the prefill after the generation prompt: no end of turn.
    assert out == template.render([ASK]) + "Hello! How"


def test_continue_final_is_not_fooled_by_text_in_the_end_of_turn() -> None:
    # "<" also occurs in "<|im_end|>": a search for the text's last occurrence cuts there.
    out = ChatTemplate(None).render([ASK, ChatMessage("assistant", "<")], continue_final=True)
    assert out == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<"


def test_continue_final_with_a_template_that_branches_on_the_text() -> None:
    template = ChatTemplate("{% for m in messages %}{% if 'x' in m.content %}[{{ m.content }}]"
                            "{% else %}({{ m.content }}){% endif %}{% endfor %}")
    out = template.render([ASK, ChatMessage("assistant", "ax")], continue_final=True)
    assert out == "(Hi)[ax"


@pytest.mark.parametrize("source", [
    "{% for m in messages %}{{ m.content | upper }};{% endfor %}",  # rewrites the text
    "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}",
])
def test_continue_final_refused_when_the_template_does_not_keep_the_text(source: str) -> None:
    with pytest.raises(InvalidParameter, match="cannot continue a final assistant message") \
            as caught:
        # The user's "Hello?" holds the text too: no cut in an earlier message either.
        ChatTemplate(source).render([ChatMessage("user", "Hello?"),
                                     ChatMessage("assistant", "Hello")], continue_final=True)
    assert caught.value.param == "messages"


def test_continue_final_needs_final_text() -> None:
    with pytest.raises(InvalidParameter, match="no final message text"):
        ChatTemplate(None).render([ASK, ChatMessage("assistant", None)], continue_final=True)
