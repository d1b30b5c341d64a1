"""Tiny, offline fixtures for chat fine-tuning: real-world chat templates, a byte-level BPE tokenizer trained
in milliseconds, and a random-init Llama saved as an ordinary model folder."""

from __future__ import annotations

from pathlib import Path

# Real-world chat templates, simplified (no tools, no dates) but with their structure kept: where the BOS
# comes from, how the system prompt is placed, which roles they reject, what the generation prompt is.
TEMPLATES: dict[str, str] = {
    # SmolLM2 / Qwen2 style ChatML, with the default system prompt when the conversation has none.
    "chatml": (
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful AI assistant.<|im_end|>\\n' }}"
        "{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Meta-Llama-3-8B-Instruct (BOS only before the first message, content trimmed).
    "llama3": (
        "{% set loop_messages = messages %}"
        "{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    # Mistral-7B-Instruct: system prepended to the first user message, strict user/assistant alternation,
    # no generation prompt (the prompt ends with [/INST]).
    "mistral": (
        "{%- if messages[0]['role'] == 'system' %}"
        "{%- set system_message = messages[0]['content'] %}"
        "{%- set loop_messages = messages[1:] %}"
        "{%- else %}"
        "{%- set loop_messages = messages %}"
        "{%- endif %}"
        "{{- bos_token }}"
        "{%- for message in loop_messages %}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{- raise_exception('After the optional system message, conversation roles must alternate "
        "user/assistant/user/assistant/...') }}"
        "{%- endif %}"
        "{%- if message['role'] == 'user' %}"
        "{%- if loop.first and system_message is defined %}"
        "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{%- else %}"
        "{{- '[INST] ' + message['content'] + ' [/INST]' }}"
        "{%- endif %}"
        "{%- elif message['role'] == 'assistant' %}"
        "{{- ' ' + message['content'] + eos_token }}"
        "{%- else %}"
        "{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial "
        "optional system message!') }}"
        "{%- endif %}"
        "{%- endfor %}"
    ),
    # Gemma 3: no system role (prepended to the first user turn), assistant is called "model".
    "gemma": (
        "{{ bos_token }}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
        "{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}"
        "{%- set first_user_prefix = '' -%}"
        "{%- set loop_messages = messages -%}"
        "{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{%- endif -%}"
        "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
        "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}"
        "{{ '<end_of_turn>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
    ),
    # HuggingFaceH4/zephyr-7b-beta, verbatim: the newline after each `{{ }}` is kept (trim_blocks only eats
    # those after block tags), so every turn ends "</s>\n" and the generation prompt is "<|assistant|>\n".
    "zephyr": (
        "{% for message in messages %}\n"
        "{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
        "{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n"
        "{% endif %}\n"
        "{% endfor %}"
    ),
}

# The end-of-turn marker each template writes after an assistant reply (what the model must learn to emit).
END_MARKERS = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>", "gemma": "<end_of_turn>",
               "zephyr": "</s>"}

SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "<bos>", "<start_of_turn>", "<end_of_turn>",
                  "<|system|>", "<|user|>", "<|assistant|>"]
BASE_SPECIAL_TOKENS = ["<|endoftext|>", "<pad>"]

# (bos, eos) as the real models' tokenizers set them; the BOS is what `add_special_tokens=True` prepends.
TEMPLATE_SPECIALS: dict[str | None, tuple[str | None, str]] = {
    None: (None, "<|endoftext|>"),
    "chatml": (None, "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral": ("<s>", "</s>"),
    "gemma": ("<bos>", "<end_of_turn>"),
    "zephyr": ("<s>", "</s>"),
}

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello! How are you today?",
    "I am fine, thank you for asking.",
    "What is the capital of France? The capital of France is Paris.",
    "Can you help me write a short poem about the sea?",
    "Sure, here is a short poem about the sea and the sky.",
    "The user asked a question and the assistant gave a helpful answer.",
    "You are a helpful AI assistant. Answer briefly and politely.",
    "The system prompt tells the model how to behave.",
    "Please summarize the following text in one sentence.",
    "The weather today is sunny with a light wind from the west.",
    "Tomorrow it will rain in the morning and clear up in the afternoon.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Two plus two is four, and three times three is nine.",
    "The train leaves the station at nine o'clock every morning.",
    "She reads a book in the garden while the birds sing.",
    "Translate this sentence into German, please.",
    "Good morning! What would you like to know?",
    "The building needs a permit before construction can start.",
    "Concrete must cure for at least seven days before loading.",
    "Thank you very much, that was very helpful.",
    "Let me think about that step by step.",
    "First, we read the data. Then we train the model. Finally, we evaluate it.",
    "Tell me a joke about computers.",
    "Why did the computer go to the doctor? It had a virus.",
    "The instructions were clear, so the answer was correct.",
    "My favourite colours are blue, green and yellow.",
    "How many days are there in a week? There are seven days in a week.",
    "The meeting is on Monday at ten in the morning.",
    "Numbers like 1, 2, 3, 10, 42 and 100 appear in text too.",
    "Code looks like this: print('hello world') and x = [1, 2, 3].",
    "Questions end with a question mark; answers often end with a full stop.",
]


def make_tiny_tokenizer(template: str | None = "chatml", *, chat_tokens: bool = True):
    """A byte-level BPE (vocab ~500) trained on CORPUS, as a transformers fast tokenizer with TEMPLATES[template].

    The special tokens of every template are in the vocabulary (chat_tokens=False: only `<|endoftext|>` and
    `<pad>`, like a base model without chat tokens). BOS/EOS follow the real model family of TEMPLATE, and the
    BOS, when there is one, is prepended by `add_special_tokens=True` as real Llama/Mistral/Gemma tokenizers do.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if template is not None and template not in TEMPLATES:
        raise KeyError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    specials = SPECIAL_TOKENS if chat_tokens else BASE_SPECIAL_TOKENS
    bos, eos = TEMPLATE_SPECIALS[template] if chat_tokens else (None, "<|endoftext|>")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    post = [processors.ByteLevel(trim_offsets=True)]
    if bos is not None:
        post.append(processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                  special_tokens=[(bos, backend.token_to_id(bos))]))
    backend.post_processor = processors.Sequence(post)

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token="<pad>",
                                        model_max_length=512)
    tokenizer.chat_template = TEMPLATES[template] if template is not None else None

    # transformers 5 silently ignores some constructor arguments: check what we got
    assert tokenizer.eos_token == eos and tokenizer.pad_token == "<pad>" and tokenizer.bos_token == bos
    for token in specials:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert ids == [backend.token_to_id(token)], f"{token} is not a single token: {ids}"
    sample = "<|im_start|>user\nHello, how are you?<|im_end|>\n"
    if not chat_tokens:
        sample = "Hello, how are you?<|endoftext|>"
    assert tokenizer.decode(tokenizer.encode(sample, add_special_tokens=False)) == sample
    return tokenizer


def make_tiny_llama(folder: str | Path, template: str | None = "chatml", seed: int = 0, hidden: int = 64,
                    layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Path:
    """Save a random-init LlamaForCausalLM (safetensors) and make_tiny_tokenizer(template) into FOLDER."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(template)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=128,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)  # the same tiny model in every session, so test outcomes do not vary
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
