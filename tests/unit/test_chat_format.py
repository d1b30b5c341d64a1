"""Chat rendering and the assistant loss mask, across five real-world chat templates."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from chat_helpers import END_MARKERS, TEMPLATES, make_tiny_llama, make_tiny_tokenizer  # noqa: E402

from tunelab.lm.chat_format import (  # noqa: E402
    BUILTIN_TEMPLATES,
    IGNORE_INDEX,
    Rendered,
    TemplateError,
    ensure_chat_template,
    preview,
    prompt_and_reference,
    render_chat,
    render_prompt,
    render_text,
)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}


SYSTEM = {"role": "system", "content": "You answer briefly and politely."}

CONVERSATIONS = {
    "single": [user("What is the capital of France?"), assistant("The capital of France is Paris.")],
    "system": [SYSTEM, user("Tell me a joke about computers."),
               assistant("Why did the computer go to the doctor? It had a virus.")],
    "multi": [user("Hello! How are you today?"), assistant("I am fine, thank you for asking."),
              user("How many days are there in a week?"), assistant("There are seven days in a week."),
              user("And two plus two?"), assistant("Two plus two is four.")],
    "weight0": [SYSTEM, user("Good morning!"), assistant("Good morning! What would you like to know?", weight=0),
                user("When does the train leave?"), assistant("The train leaves at nine o'clock.")],
}

# What each template puts between the prompt and the reply that belongs to the reply (Mistral: a space).
REPLY_PREFIX = {"mistral": " "}

_TOKENIZERS: dict = {}


def tokenizer_for(template: str | None):
    if template not in _TOKENIZERS:
        _TOKENIZERS[template] = make_tiny_tokenizer(template)
    return _TOKENIZERS[template]


def trained_text(tokenizer, rendered: Rendered) -> str:
    return tokenizer.decode([t for t in rendered.labels if t != IGNORE_INDEX], skip_special_tokens=False)


def untrained_text(tokenizer, rendered: Rendered) -> str:
    return tokenizer.decode([t for t, lab in zip(rendered.input_ids, rendered.labels) if lab == IGNORE_INDEX],
                            skip_special_tokens=False)


def expected(template: str, replies: list[dict]) -> str:
    return "".join(REPLY_PREFIX.get(template, "") + m["content"] + END_MARKERS[template] for m in replies)


def first_trained(rendered: Rendered) -> int:
    return next(k for k, lab in enumerate(rendered.labels) if lab != IGNORE_INDEX)


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_all_assistant_trains_exactly_the_replies_and_their_end_marker(template, conv):
    tokenizer = tokenizer_for(template)
    messages = CONVERSATIONS[conv]
    rendered = render_chat(tokenizer, messages)
    trained = [m for m in messages if m["role"] == "assistant" and m.get("weight", 1) != 0]
    assert trained_text(tokenizer, rendered) == expected(template, trained)
    rest = untrained_text(tokenizer, rendered)
    for m in trained:
        assert m["content"] not in rest
    for m in messages:  # what is not trained is still there, as context
        if m not in trained and m["role"] != "system":
            assert m["content"] in rest
    assert rendered.input_ids == tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
    assert len(rendered.labels) == len(rendered.input_ids)
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(rendered.input_ids, rendered.labels))
    assert rendered.trained_tokens == sum(lab != IGNORE_INDEX for lab in rendered.labels) > 0
    assert "".join(rendered.text[a:b] for a, b in rendered.spans) == expected(template, trained)
    assert rendered.truncated == 0


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_last_assistant_trains_only_the_final_reply(template, conv):
    tokenizer = tokenizer_for(template)
    messages = CONVERSATIONS[conv]
    rendered = render_chat(tokenizer, messages, train_on="last-assistant")
    assert trained_text(tokenizer, rendered) == expected(template, [messages[-1]])
    for m in messages[:-1]:
        if m["role"] == "assistant":
            assert m["content"] in untrained_text(tokenizer, rendered)


@pytest.mark.parametrize("template", TEMPLATES)
def test_all_trains_every_token(template):
    tokenizer = tokenizer_for(template)
    rendered = render_chat(tokenizer, CONVERSATIONS["weight0"], train_on="all")
    assert rendered.labels == rendered.input_ids
    assert rendered.spans == [(0, len(rendered.text))]


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_prompt_is_the_training_prefix_of_the_final_reply(template, conv):
    tokenizer = tokenizer_for(template)
    messages = CONVERSATIONS[conv]
    rendered = render_chat(tokenizer, messages, train_on="last-assistant")
    prompt = render_prompt(tokenizer, messages)
    assert prompt == rendered.input_ids[:first_trained(rendered)]
    prompt_messages, reference = prompt_and_reference(messages)
    assert prompt_messages == messages[:-1] and reference == messages[-1]["content"]
    assert render_prompt(tokenizer, prompt_messages) == prompt  # without the reply: the same prompt
    bos = tokenizer.bos_token_id
    if bos is not None:  # the template writes the BOS when it wants one (Zephyr does not); never doubled
        assert prompt.count(bos) == ("bos_token" in TEMPLATES[template])


def test_prompt_and_reference_needs_a_final_reply():
    with pytest.raises(ValueError, match="does not end with an assistant"):
        prompt_and_reference([user("hi")])
    with pytest.raises(ValueError, match="no prompt"):
        render_prompt(tokenizer_for("chatml"), [assistant("hi")])


@pytest.mark.parametrize("template", ["chatml", "llama3", "zephyr"])
def test_assistant_first_conversation(template):
    tokenizer = tokenizer_for(template)
    messages = [assistant("Good morning! What would you like to know?"), user("The weather."),
                assistant("It is sunny today.")]
    rendered = render_chat(tokenizer, messages)
    assert trained_text(tokenizer, rendered) == expected(template, [messages[0], messages[2]])


@pytest.mark.parametrize("template", ["mistral", "gemma"])
def test_a_conversation_the_template_rejects_is_a_template_error(template):
    with pytest.raises(TemplateError, match="rejected.*alternate"):
        render_chat(tokenizer_for(template), [user("hi"), user("hello?"), assistant("Hello.")])


EARLIER_TURNS_DIFFER = (  # like reasoning templates that drop old thinking: earlier replies render differently
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and not loop.last %}(earlier reply){% else %}{{ m.content }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT_DIFFERS = (  # a generation prompt that is not how the template starts an assistant turn
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def test_template_without_the_prefix_property_is_refused_with_the_hint():
    tokenizer = make_tiny_tokenizer("chatml")
    ensure_chat_template(tokenizer, EARLIER_TURNS_DIFFER)
    messages = CONVERSATIONS["multi"]
    with pytest.raises(TemplateError, match="train_on: last-assistant"):
        render_chat(tokenizer, messages)
    rendered = render_chat(tokenizer, messages, train_on="last-assistant")
    assert trained_text(tokenizer, rendered) == messages[-1]["content"] + "<|im_end|>"
    assert "(earlier reply)" in untrained_text(tokenizer, rendered)

    ensure_chat_template(tokenizer, PROMPT_DIFFERS)
    with pytest.raises(TemplateError, match="generation prompt.*another chat template"):
        render_chat(tokenizer, messages, train_on="last-assistant")


def test_ensure_chat_template():
    bare = make_tiny_tokenizer(None)
    with pytest.raises(TemplateError, match="no chat template; set data.chat_template: chatml"):
        ensure_chat_template(bare, None)
    with pytest.raises(TemplateError, match="no chat template"):
        render_chat(bare, CONVERSATIONS["single"])
    assert ensure_chat_template(bare, "chatml") == 0  # its ChatML tokens are already there
    assert bare.chat_template == BUILTIN_TEMPLATES["chatml"]
    assert ensure_chat_template(bare, None) == 0
    rendered = render_chat(bare, CONVERSATIONS["system"])
    assert rendered.text.startswith("<|im_start|>system\nYou answer briefly")
    assert trained_text(bare, rendered) == CONVERSATIONS["system"][-1]["content"] + "<|im_end|>"
    assert render_prompt(bare, CONVERSATIONS["system"]) == rendered.input_ids[:first_trained(rendered)]

    with pytest.raises(TemplateError, match="unknown chat template 'chatm'"):
        ensure_chat_template(bare, "chatm")
    with pytest.raises(TemplateError, match="not a valid Jinja template"):
        ensure_chat_template(bare, "{% for m in messages %}{{ m.content }}")
    ensure_chat_template(bare, TEMPLATES["zephyr"])
    assert bare.chat_template == TEMPLATES["zephyr"]


@pytest.mark.parametrize(("template", "tokens"), [("chatml", ["<|im_start|>", "<|im_end|>"]),
                                                  ("llama3", ["<|start_header_id|>", "<|end_header_id|>",
                                                              "<|eot_id|>"])])
def test_builtin_template_adds_its_control_tokens(template, tokens):
    base = make_tiny_tokenizer(None, chat_tokens=False)
    size = len(base)
    assert ensure_chat_template(base, template) == len(tokens)
    assert len(base) == size + len(tokens)
    for token in tokens:
        assert len(base.encode(token, add_special_tokens=False)) == 1
    assert ensure_chat_template(base, template) == 0  # idempotent
    reply = CONVERSATIONS["multi"][-1]["content"]
    rendered = render_chat(base, CONVERSATIONS["multi"], train_on="last-assistant")
    assert trained_text(base, rendered) == reply + tokens[-1]
    assert base.decode(rendered.input_ids) == rendered.text


def test_truncation_cuts_from_the_right_and_counts():
    tokenizer = tokenizer_for("chatml")
    whole = render_chat(tokenizer, CONVERSATIONS["multi"])
    cut = render_chat(tokenizer, CONVERSATIONS["multi"], max_length=20)
    assert cut.input_ids == whole.input_ids[:20] and cut.labels == whole.labels[:20]
    assert cut.truncated == len(whole.input_ids) - 20
    assert render_chat(tokenizer, CONVERSATIONS["multi"], max_length=10_000).truncated == 0


def test_render_text_appends_eos_and_trains_everything():
    tokenizer = tokenizer_for("llama3")
    rendered = render_text(tokenizer, "The weather today is sunny.")
    assert rendered.input_ids[0] == tokenizer.bos_token_id
    assert rendered.input_ids[-1] == tokenizer.eos_token_id
    assert rendered.labels == rendered.input_ids
    already = render_text(tokenizer, "The weather today is sunny.<|eot_id|>")
    assert already.input_ids == rendered.input_ids  # EOS not doubled
    cut = render_text(tokenizer, "The weather today is sunny.", max_length=4)
    assert len(cut.input_ids) == 4 and cut.truncated == len(rendered.input_ids) - 4


def test_preview_marks_the_trained_tokens():
    tokenizer = tokenizer_for("mistral")
    messages = [user("What does [/INST] mean?"), assistant("It closes an instruction [bold].")]
    rendered = render_chat(tokenizer, messages)
    plain = preview(tokenizer, rendered, color=False)
    assert "[/INST]⟦ It closes an instruction [bold].</s>⟧" in plain
    assert plain.endswith(f"tokens: {len(rendered.input_ids)} (trained {rendered.trained_tokens}, truncated 0)")
    colored = preview(tokenizer, rendered)
    assert "[bold green] It closes an instruction \\[bold].</s>[/]" in colored
    assert "What does \\[/INST] mean?" in colored

    from rich.console import Console

    console = Console(width=200, force_terminal=False, color_system=None)
    with console.capture() as out:
        console.print(colored)
    assert "It closes an instruction [bold].</s>" in out.get()

    text = render_text(tokenizer_for("llama3"), "Hello there.")
    assert preview(tokenizer_for("llama3"), text, color=False).startswith("⟦<|begin_of_text|>Hello there.<|eot_id|>⟧")


def test_make_tiny_tokenizer_is_a_faithful_fast_tokenizer():
    tokenizer = tokenizer_for("chatml")
    assert tokenizer.is_fast and tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>"
    assert 300 < len(tokenizer) <= 500
    text = "<|im_start|>user\nTwo plus two?<|im_end|>\n"
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert tokenizer.decode(enc["input_ids"]) == text
    assert enc["offset_mapping"][0] == (0, len("<|im_start|>"))
    assert tokenizer_for("mistral")("hi")["input_ids"][0] == tokenizer_for("mistral").bos_token_id


def test_make_tiny_llama_round_trips(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny_llama(tmp_path / "tiny-llama", template="llama3")
    assert (folder / "model.safetensors").exists()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert tokenizer.chat_template == TEMPLATES["llama3"]
    assert model.config.vocab_size == len(tokenizer) and not model.config.tie_word_embeddings
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    rendered = render_chat(tokenizer, CONVERSATIONS["multi"])
    assert trained_text(tokenizer, rendered) == expected("llama3", CONVERSATIONS["multi"][1::2])
    out = model(input_ids=torch.tensor([rendered.input_ids]), labels=torch.tensor([rendered.labels]))
    assert out.logits.shape == (1, len(rendered.input_ids), len(tokenizer))
    assert torch.isfinite(out.loss)

    again = make_tiny_llama(tmp_path / "again", template="llama3")
    state = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # same seed, same model


def test_assistant_first_with_a_template_without_generation_prompt():
    tokenizer = make_tiny_tokenizer("chatml")
    ensure_chat_template(tokenizer, "{% for m in messages %}{{ m.role }}: {{ m.content }}<|im_end|>\n{% endfor %}")
    rendered = render_chat(tokenizer, [assistant("Good morning!"), user("Hello.")])
    # found by its content; the token " Good" carries the template's space with it
    assert trained_text(tokenizer, rendered) == " Good morning!<|im_end|>"
    assert "".join(rendered.text[a:b] for a, b in rendered.spans) == "Good morning!<|im_end|>"
    with pytest.raises(TemplateError, match="start the conversation with a user"):
        render_chat(tokenizer, [assistant(""), user("Hello.")])
