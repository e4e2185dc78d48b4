"""Chat formatting for instruction-tuned models: templates, conversations and the chat mask (method §3.5).

Gemma Scope 1 trained its IT SAEs on pretraining documents wrapped in Gemma's chat template -- each
document as a user turn, followed by the model-turn prefix -- and collected activations on every position
*except the user-turn prefix* (``<start_of_turn>user\\n``), whose activations have a much larger norm and
are the same in every document. Rollouts (a prompt and the model's sampled response) are conversations
rendered the same way. This module renders both with a chat template and says, token by token, which
positions are kept:

``CHAT_MASK_POLICY`` = ``"chat:exclude-user-prefix+special"``

* excluded: the **user-turn prefix** of every user (or system) message, i.e. every token the template puts
  between the previous message's content (or the start) and this message's content -- for Gemma's template
  ``<bos><start_of_turn>user\\n`` on the first turn; a token that straddles the boundary is excluded too;
* excluded: **special tokens**, including the template's control tokens that a tokenizer lists only in
  its added-tokens table (Gemma's ``<start_of_turn>`` and ``<end_of_turn>`` are not in ``all_special_ids``);
* kept: everything else -- the user's text, the model-turn prefix (``model\\n``) and the model's text.

The template is the tokenizer's own (``"tokenizer"``: an IT model's tokenizer carries one), saescope's copy
of Gemma's turn format (``"gemma"``: for a base model whose tokenizer has none, e.g. the embedded Gemma 3
270M), or a Jinja template file. A tokenizer without a template raises :class:`MissingChatTemplateError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

CHAT_MASK_POLICY = "chat:exclude-user-prefix+special"
CHAT_MASK_DESCRIPTION = (
    "the chat template's user-turn prefix (every template token before the content of a user or system "
    "message) and the template's control tokens are excluded as well"
)
TOKENIZER_TEMPLATE = "tokenizer"

#: Gemma's turn format (Gemma 2 and 3 instruction-tuned models): a system message is folded into the first
#: user turn, the assistant role is called "model". Written for saescope from the published turn format.
GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set first_prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_prefix if loop.first else '') + message['content'] -}}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)
BUILTIN_TEMPLATES: dict[str, str] = {"gemma": GEMMA_CHAT_TEMPLATE}

#: Roles whose template prefix is the "user-turn prefix" of the mask policy.
PROMPT_ROLES = ("user", "system")
#: Stands in for a message's content to find where the template puts it (no whitespace: templates trim).
_SENTINEL = "@@saescope-message-{}@@"


class ChatTemplateError(ValueError):
    """A chat template is missing, unreadable, or cannot be applied; the message says what to do."""


class MissingChatTemplateError(ChatTemplateError):
    """The tokenizer has no chat template (a base model's usually has none) and none was given."""


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str  # "user", "assistant" (or "model"), "system"
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def parse_messages(value: object, where: str) -> tuple[ChatMessage, ...]:
    """A ``messages`` list (``[{"role": ..., "content": ...}, ...]``, as in chat datasets) -> messages.

    ``where`` names the record in errors (``file.jsonl:12``).
    """
    shape = "a non-empty list of {'role': ..., 'content': ...} objects"
    if not isinstance(value, list) or not value:
        raise ChatTemplateError(f"{where}: a conversation must be {shape}; got {type(value).__name__}")
    messages = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str) or "content" not in item:
            raise ChatTemplateError(f"{where}: message {index} is not an object with 'role' and 'content'")
        if not isinstance(item["content"], str):
            raise ChatTemplateError(
                f"{where}: message {index} has a {type(item['content']).__name__} content; only text is supported"
            )
        messages.append(ChatMessage(item["role"], item["content"]))
    return tuple(messages)


def resolve_chat_template(tokenizer: Any, template: str = TOKENIZER_TEMPLATE) -> str:
    """The Jinja source of ``template``: ``"tokenizer"`` (the tokenizer's own), ``"gemma"``, or a file path."""
    if template == TOKENIZER_TEMPLATE:
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # tokenizers with several named templates
            own = own.get("default")
        if not isinstance(own, str) or not own.strip():
            name = getattr(tokenizer, "name_or_path", "") or "this model"
            raise MissingChatTemplateError(
                f"the tokenizer of {name} has no chat template (base models usually have none). Use the "
                "instruction-tuned model, or give a template: 'gemma' for Gemma's turn format "
                f"(--chat-template gemma), or a Jinja template file ({', '.join(sorted(BUILTIN_TEMPLATES))} built in)"
            )
        return own
    if template in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[template]
    path = Path(template).expanduser()
    if not path.is_file():
        raise ChatTemplateError(
            f"chat template {template!r} is neither {TOKENIZER_TEMPLATE!r} (the tokenizer's own), a built-in "
            f"({', '.join(sorted(BUILTIN_TEMPLATES))}) nor an existing Jinja template file"
        )
    return path.read_text(encoding="utf-8")


def control_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids the tokenizer marks special anywhere: ``all_special_ids`` and its added-tokens table."""
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, token in added.items() if getattr(token, "special", False))
    return frozenset(ids)


class RenderedChat(NamedTuple):
    text: str
    #: Character spans [start, end) of the user-turn prefixes in ``text``.
    excluded_spans: tuple[tuple[int, int], ...]


class EncodedChat(NamedTuple):
    ids: list[int]
    #: True where the position's activation is kept under ``CHAT_MASK_POLICY``.
    keep: list[bool]


def _placed_content(text: str, start: int, content: str, following: str) -> str:
    """The form in which the template wrote ``content`` at ``start`` (as is, or whitespace-trimmed)."""
    for candidate in dict.fromkeys((content, content.strip())):
        if text.startswith(candidate, start) and text.startswith(following, start + len(candidate)):
            return candidate
    raise ChatTemplateError(
        "the chat template changes message contents beyond trimming whitespace, so saescope cannot tell "
        "which tokens are the user-turn prefix; use another template (--chat-template)"
    )


class ChatFormat:
    """A tokenizer and a chat template: renders conversations and tokenises them with the chat keep mask."""

    def __init__(self, tokenizer: Any, template: str = TOKENIZER_TEMPLATE) -> None:
        self.tokenizer = tokenizer
        self.template_option = template
        self.template = resolve_chat_template(tokenizer, template)
        self.control_ids = control_token_ids(tokenizer)

    def _apply(self, messages: Sequence[ChatMessage], add_generation_prompt: bool) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                [message.to_dict() for message in messages],
                chat_template=self.template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
        except Exception as error:  # jinja2 raises TemplateError and the template's own raise_exception
            raise ChatTemplateError(f"the chat template failed on a conversation: {error}") from error
        if not isinstance(text, str):
            raise ChatTemplateError(f"the chat template rendered a {type(text).__name__}, not text")
        return text

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool) -> RenderedChat:
        """The template applied to ``messages``, with the character spans of its user-turn prefixes.

        The template is also rendered with a placeholder for each content; the text between placeholders is
        what the template itself writes, so each prefix is located exactly, whatever the template.
        """
        if not messages:
            raise ChatTemplateError("a conversation needs at least one message")
        text = self._apply(messages, add_generation_prompt)
        placeholders = [ChatMessage(m.role, _SENTINEL.format(i)) for i, m in enumerate(messages)]
        skeleton = self._apply(placeholders, add_generation_prompt)
        pieces, rest = [], skeleton
        for i in range(len(messages)):
            before, found, rest = rest.partition(_SENTINEL.format(i))
            if not found or _SENTINEL.format(i) in rest:
                raise ChatTemplateError(f"the chat template does not write message {i}'s content exactly once")
            pieces.append(before)
        pieces.append(rest)
        spans, cursor = [], 0
        for i, message in enumerate(messages):
            if not text.startswith(pieces[i], cursor):
                raise ChatTemplateError("the chat template renders differently depending on message contents")
            start = cursor + len(pieces[i])
            if message.role in PROMPT_ROLES:
                spans.append((cursor, start))
            cursor = start + len(_placed_content(text, start, message.content, pieces[i + 1]))
        if text[cursor:] != pieces[-1]:
            raise ChatTemplateError("the chat template renders differently depending on message contents")
        return RenderedChat(text, tuple(spans))

    def encode(self, chats: Iterable[tuple[Sequence[ChatMessage], bool]]) -> list[EncodedChat]:
        """Token ids (the template's BOS included) and keep flags of each ``(messages, add_generation_prompt)``."""
        rendered = [self.render(messages, add_generation_prompt=prompt) for messages, prompt in chats]
        if not rendered:
            return []
        try:
            encoded = self.tokenizer(
                [r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True, verbose=False
            )
        except NotImplementedError as error:  # slow (Python) tokenizers have no offsets
            raise ChatTemplateError(
                "chat formatting needs a fast tokenizer (character offsets locate the user-turn prefix)"
            ) from error
        result = []
        for chat, ids, offsets in zip(rendered, encoded["input_ids"], encoded["offset_mapping"], strict=True):
            excluded = bytearray(len(chat.text) + 1)
            for start, end in chat.excluded_spans:
                excluded[start:end] = b"\x01" * (end - start)
            keep = [
                int(token) not in self.control_ids and not any(excluded[start : max(end, start + 1)])
                for token, (start, end) in zip(ids, offsets, strict=True)
            ]
            result.append(EncodedChat([int(token) for token in ids], keep))
        return result

    def stop_token_ids(self) -> list[int]:
        """The control token(s) the template closes a model turn with (Gemma: ``<end_of_turn>``)."""
        exchange = [ChatMessage("user", _SENTINEL.format(0)), ChatMessage("assistant", _SENTINEL.format(1))]
        skeleton = self._apply(exchange, add_generation_prompt=False)
        after_reply = skeleton.partition(_SENTINEL.format(1))[2]
        ids = self.tokenizer(after_reply, add_special_tokens=False)["input_ids"] if after_reply else []
        stops = []
        for token in ids:
            if int(token) not in self.control_ids:
                break
            stops.append(int(token))
        return stops


def conversation_chat(messages: Sequence[ChatMessage]) -> tuple[Sequence[ChatMessage], bool]:
    """A conversation to encode: the model-turn prefix is added when it ends on a user turn (a prompt)."""
    return messages, messages[-1].role in PROMPT_ROLES


def document_chat(text: str) -> tuple[Sequence[ChatMessage], bool]:
    """A pretraining document as Gemma Scope 1 wrapped it: a user turn, then the model-turn prefix."""
    return (ChatMessage("user", text),), True
