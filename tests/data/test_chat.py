"""Chat formatting: templates, the user-turn-prefix mask, conversation sources, and the mask flowing through
window packing into activations, the cache manifest and metrics.json (method §3.5)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from chat_fixtures import (
    END,
    MODEL,
    SPECIAL,
    START,
    USER,
    VOCAB,
    build_chat_tokenizer,
    chat_model_dir,
    write_conversations,
)
from saescope.data.activations import stream_token_activations, window_activations
from saescope.data.cache import ActivationCache
from saescope.data.chat import (
    CHAT_MASK_POLICY,
    ChatFormat,
    ChatMessage,
    ChatTemplateError,
    MissingChatTemplateError,
    document_chat,
    parse_messages,
)
from saescope.data.corpus import CorpusConfig, corpus_windows, iter_documents
from saescope.data.documents import Document
from saescope.data.sources import build_cache, streamed_source
from saescope.data.windows import (
    SAMPLE_POOL_FACTOR,
    WindowBatch,
    iter_token_windows,
    special_token_mask,
    spread_order,
    stack_windows,
)
from saescope.dictionaries.sites import DictionarySites
from saescope.eval import EvalConfig, EvalTarget, evaluate
from saescope.models.hooks import capture
from saescope.models.loading import load_model
from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig, build_dictionary
from saescope.train.kl_finetune import KLFinetuneConfig, kl_finetune

TURN_TOKENS = (START, END)


def w(i: int) -> int:
    return 8 + i  # id of the word w<i> in the chat tokenizer


def expected_keep(windows_WT: torch.Tensor) -> torch.Tensor:
    """The chat mask worked out from token ids alone: in the tiny vocabulary the user-turn prefix is
    `<start_of_turn> user` (content words are w<i>, or `user` elsewhere), so a `user` token is a prefix
    token exactly when the stream token before it is `<start_of_turn>` -- possibly in the previous window."""
    n_windows = windows_WT.shape[0]
    stream = windows_WT[:, 1:].reshape(-1)
    previous = torch.cat([torch.tensor([-1]), stream[:-1]])
    prefix = (stream == USER) & (previous == START)
    special = torch.isin(stream, torch.tensor(SPECIAL + TURN_TOKENS))
    keep = (~prefix & ~special).view(n_windows, -1)
    return torch.cat([torch.zeros(n_windows, 1, dtype=torch.bool), keep], dim=1)


@pytest.fixture(scope="module")
def chat() -> ChatFormat:
    return ChatFormat(build_chat_tokenizer())


def test_a_document_becomes_a_user_turn_whose_prefix_is_excluded_by_position(chat: ChatFormat) -> None:
    [encoded] = chat.encode([document_chat("w1 w2 user w3")])
    assert encoded.ids == [2, START, USER, w(1), w(2), USER, w(3), END, START, MODEL]
    # BOS and the user-turn prefix dropped; the word "user" inside the document kept; the turn tokens dropped;
    # the model-turn prefix's ordinary token ("model") kept, as in Gemma Scope 1.
    assert encoded.keep == [False, False, False, True, True, True, True, False, False, True]


def test_every_user_turn_of_a_conversation_has_its_prefix_excluded(chat: ChatFormat) -> None:
    messages = parse_messages(
        [
            {"role": "user", "content": "  w1 w2 "},  # the template trims: its prefix is still found
            {"role": "assistant", "content": "w3 user"},
            {"role": "user", "content": "w4"},
        ],
        "test",
    )
    [encoded] = chat.encode([(messages, False)])
    tokens = [START, USER, w(1), w(2), END, START, MODEL, w(3), USER, END, START, USER, w(4), END]
    assert encoded.ids == [2, *tokens]
    kept = [token for token, keep in zip(encoded.ids, encoded.keep, strict=True) if keep]
    assert kept == [w(1), w(2), MODEL, w(3), USER, w(4)]  # the assistant's "user" is text, not a prefix


def test_the_builtin_gemma_template_folds_a_system_message_into_the_first_user_turn() -> None:
    tokenizer = build_chat_tokenizer(with_template=False)
    chat = ChatFormat(tokenizer, "gemma")
    messages = (ChatMessage("system", "w5"), ChatMessage("user", "w6"), ChatMessage("assistant", "w7"))
    rendered = chat.render(messages, add_generation_prompt=False)
    assert rendered.text == "<bos><start_of_turn>user\nw5\n\nw6<end_of_turn>\n<start_of_turn>model\nw7<end_of_turn>\n"
    [encoded] = chat.encode([(messages, False)])
    assert [t for t, k in zip(encoded.ids, encoded.keep, strict=True) if k] == [w(5), w(6), MODEL, w(7)]
    assert chat.stop_token_ids() == [END]
    # Same rendering as the tokenizer's own Gemma-style template for a plain exchange.
    exchange = (ChatMessage("user", "w1"), ChatMessage("assistant", "w2"))
    own = ChatFormat(build_chat_tokenizer())
    assert own.render(exchange, add_generation_prompt=False) == chat.render(exchange, add_generation_prompt=False)


def test_a_tokenizer_without_a_chat_template_gives_the_named_error(tmp_path: Path) -> None:
    tokenizer = build_chat_tokenizer(with_template=False)
    with pytest.raises(MissingChatTemplateError, match=r"has no chat template.*--chat-template gemma"):
        ChatFormat(tokenizer)
    corpus = CorpusConfig(source=str(write_conversations(tmp_path / "c.jsonl", 4)), text_field="messages")
    with pytest.raises(MissingChatTemplateError):
        corpus_windows(dataclasses.replace(corpus, chat_template="tokenizer"), tokenizer)
    with pytest.raises(ChatTemplateError, match="neither"):
        ChatFormat(tokenizer, str(tmp_path / "missing.jinja"))
    template_file = tmp_path / "gemma.jinja"
    template_file.write_text(build_chat_tokenizer().chat_template)
    assert (
        ChatFormat(tokenizer, str(template_file))
        .render((ChatMessage("user", "w1"),), add_generation_prompt=True)
        .text.endswith("<start_of_turn>model\n")
    )


def test_conversation_sources_need_a_chat_template(tmp_path: Path) -> None:
    path = write_conversations(tmp_path / "rollouts.jsonl", 6)
    documents = list(iter_documents(str(path), "all", text_field="messages"))
    assert len(documents) == 6
    assert documents[0].messages is not None
    assert documents[0].messages[0].role == "user"
    assert "messages" in documents[0].to_dict()
    assert "messages" not in Document("a", "b", "c", "d").to_dict()
    plain = CorpusConfig(source=str(path), text_field="messages", context_size=8, heldout_fraction=0.0)
    with pytest.raises(ChatTemplateError, match="is a conversation"):
        next(corpus_windows(plain, build_chat_tokenizer()))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(ChatTemplateError, match=r"bad\.jsonl:1: message 0"):
        list(iter_documents(str(tmp_path / "bad.jsonl"), "all", text_field="messages"))


def test_plain_configs_keep_their_identity_and_policy() -> None:
    assert CorpusConfig().to_dict()["chat_template"] is None
    # A version-1 record (cache manifests made before chat support among them) left it out: plain text.
    version_1 = {k: v for k, v in CorpusConfig().to_dict().items() if k not in ("schema_version", "chat_template")}
    assert CorpusConfig.from_dict(version_1).chat_template is None
    assert CorpusConfig.from_dict(CorpusConfig(chat_template="gemma").to_dict()).chat_template == "gemma"
    with pytest.raises(ValueError, match="chat_template"):
        CorpusConfig(chat_template="")


def test_the_mask_survives_a_window_boundary_inside_the_user_prefix(chat: ChatFormat) -> None:
    tokenizer = build_chat_tokenizer()
    # Stream: <start_of_turn> user w1 <end_of_turn> <start_of_turn> model <eos> ...; with context 2 every window
    # is [BOS, one token], so the prefix's "user" sits alone in a window, after a window boundary.
    windows = WindowBatch.stack(list(iter_token_windows(["w1", "w2"], tokenizer, 2, shuffle_buffer=0, chat=chat)))
    ids = windows.ids_BT
    assert ids[:, 1].tolist() == [START, USER, w(1), END, START, MODEL, 1, START, USER, w(2), END, START, MODEL, 1]
    assert not windows.chat_keep_BT[1, 1]  # the prefix's "user", alone in its window
    keep = windows.kept_positions(SPECIAL)
    assert torch.equal(keep, expected_keep(ids))
    assert keep[:, 1].tolist() == [False, False, True, False, False, True, False] * 2


def test_chat_windows_drop_the_user_prefix_from_activations(chat: ChatFormat, tiny_gemma: torch.nn.Module) -> None:
    rng = random.Random(0)
    documents = [" ".join(rng.choice(["user", "model", *(f"w{i}" for i in range(40))]) for _ in range(9))
                 for _ in range(30)]  # fmt: skip
    windows = WindowBatch.stack(list(iter_token_windows(documents, build_chat_tokenizer(), 16, chat=chat)))
    ids = windows.ids_BT
    keep = expected_keep(ids)
    assert torch.equal(windows.kept_positions(SPECIAL), keep)
    assert torch.equal(
        special_token_mask(ids, SPECIAL) & ~keep, ~windows.chat_keep_BT & special_token_mask(ids, SPECIAL)
    )
    assert (ids[keep] == USER).any()  # "user" in the text is kept...
    assert (ids[~keep] == USER).any()  # ...and dropped in the prefixes
    sites = [Site(0, SiteKind.RES), Site(1, SiteKind.MLP)]
    token_acts = window_activations(tiny_gemma, sites, windows, SPECIAL)
    rows, cols = keep.nonzero(as_tuple=True)
    assert token_acts.windows_N.tolist() == rows.tolist()
    assert token_acts.positions_N.tolist() == cols.tolist()
    assert torch.equal(token_acts.token_ids_N, ids[keep])
    full = capture(tiny_gemma, sites, ids)  # the model reads the plain ids
    for site in sites:
        torch.testing.assert_close(token_acts.acts[site], full[site][keep], rtol=0, atol=0)


def test_cache_and_metrics_record_the_policy_and_hold_no_prefix_token(tmp_path: Path) -> None:
    model_dir = chat_model_dir(tmp_path / "tiny-it")
    loaded = load_model(str(model_dir))
    rollouts = write_conversations(tmp_path / "rollouts.jsonl", 60)
    # In stream order: expected_keep reads the stream across window boundaries.
    corpus = CorpusConfig(
        source=str(rollouts), text_field="messages", context_size=16, heldout_fraction=0.0, chat_template="tokenizer",
        window_shuffle_tokens=0,
    )  # fmt: skip
    site = Site(1, SiteKind.RES)
    build_cache(tmp_path / "cache", loaded, [site], corpus, tokens=400, windows_per_shard=4, progress=False)
    cache = ActivationCache(tmp_path / "cache")
    assert cache.manifest["mask_policy"] == CHAT_MASK_POLICY
    rows = torch.cat([cache.read_tokens(i) for i in range(len(cache.shards))])
    windows = torch.stack([window.ids_T for window in corpus_windows(corpus, loaded.tokenizer)])
    keep = expected_keep(windows)
    kept_rows = {(int(win), int(pos)) for win, pos in zip(*keep.nonzero(as_tuple=True), strict=True)}
    assert {(int(win), int(pos)) for _, win, pos in rows.tolist()} <= kept_rows
    assert all(int(windows[win, pos]) == token for token, win, pos in rows.tolist())

    sae = build_dictionary(DictionaryConfig(d_in=32, width=16), generator=torch.Generator().manual_seed(0))
    config = EvalConfig(tokens=10_000, loss_windows=8, loss_position_stride=1, batch_windows=4)
    target = EvalTarget("sae", DictionarySites(site), sae.eval(), tmp_path / "metrics")
    result = evaluate(loaded, [target], corpus, config, progress=False, split="all")["sae"]
    written = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert written["mask_policy"].startswith(CHAT_MASK_POLICY)
    assert written["dataset"]["split"] == "all"
    assert result["reconstruction"]["n_tokens"] == int(keep.sum())  # every kept position, nothing else
    # The loss windows are the first 8 of evaluation's spread sample; count the predictions whose input and
    # target are both kept there.
    pool = min(len(windows), config.sample_windows(corpus.context_size) * SAMPLE_POOL_FACTOR)
    loss_keep = keep[spread_order(pool)[:8]]
    counted = (loss_keep[:, :-1] & loss_keep[:, 1:]).sum()
    assert result["lm_loss"]["loss_n_predictions"] == int(counted)


def test_a_chat_corpus_feeds_the_model_its_own_ids_and_drops_exactly_the_masked_positions(tmp_path: Path) -> None:
    """Every path that runs the model on a chat corpus's windows (the activation stream, the cache writer, the
    live training stream, KL finetuning) passes in-vocabulary ids, and the activations kept are exactly the
    positions that are neither special tokens nor excluded by the chat mask policy."""
    loaded = load_model(str(chat_model_dir(tmp_path / "tiny-it")))
    corpus = CorpusConfig(
        source=str(write_conversations(tmp_path / "rollouts.jsonl", 40)), text_field="messages", context_size=16,
        heldout_fraction=0.0, chat_template="tokenizer", window_shuffle_tokens=0,
    )  # fmt: skip
    model_inputs: list[torch.Tensor] = []
    embeddings = loaded.model.get_input_embeddings()
    handle = embeddings.register_forward_pre_hook(lambda _module, args: model_inputs.append(args[0].detach().cpu()))
    try:
        sites = [Site(0, SiteKind.RES), Site(1, SiteKind.MLP)]
        windows = WindowBatch.stack(list(corpus_windows(corpus, loaded.tokenizer)))
        ids = windows.ids_BT
        keep = expected_keep(ids)
        assert (~keep & special_token_mask(ids, SPECIAL) & (ids == USER)).any()  # the prefixes hold ordinary tokens
        batches = stack_windows(corpus_windows(corpus, loaded.tokenizer), 4)
        chunks = list(stream_token_activations(loaded.model, sites, batches, SPECIAL))
        streamed = {(int(n), int(t)) for c in chunks for n, t in zip(c.windows_N, c.positions_N, strict=True)}
        assert streamed == {(int(n), int(t)) for n, t in zip(*keep.nonzero(as_tuple=True), strict=True)}
        assert torch.equal(torch.cat([c.token_ids_N for c in chunks]), ids[keep])

        build_cache(tmp_path / "cache", loaded, sites, corpus, tokens=200, windows_per_shard=4, progress=False)
        live = streamed_source(loaded, sites, corpus, norm_tokens=50, buffer_tokens=64)
        assert next(live.batches(8))[sites[0]].shape == (8, 32)
        sae = build_dictionary(DictionaryConfig(d_in=32, width=16), generator=torch.Generator().manual_seed(0))
        config = KLFinetuneConfig(tokens=40, beta=1.0, lr=1e-4, batch_windows=2, progress=False)
        assert kl_finetune(loaded, sae, sites[0], 1.0, corpus, config)
    finally:
        handle.remove()
    assert len(model_inputs) > len(chunks)
    assert all(int(ids_BT.max()) < VOCAB and int(ids_BT.min()) >= 0 for ids_BT in model_inputs)
