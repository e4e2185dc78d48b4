"""Sparse probing on constructed activations: a latent planted on the class direction gives top-1 accuracy near 1,
a dictionary of random directions does not; tasks are balanced as documented; labelled files are read or refused
with a message naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from interp_dictionaries import planted_dictionary

from saescope.eval.interp.common import ProbeDataSpec
from saescope.eval.interp.labelled import read_labelled_rows
from saescope.eval.interp.probing import ProbingConfig, mean_pool, pooled_from_tokens, probe_tasks, probing_of

D, WIDTH, TOKENS, PER_CLASS = 128, 32, 4, 60
CONFIG = ProbingConfig(ks=(1, 2, 5), min_per_label=5)


def class_tokens() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every sample's tokens: Gaussian noise, plus 2 along dimension 0 in the "pos" samples."""
    generator = torch.Generator().manual_seed(0)
    labels = ["pos"] * PER_CLASS + ["neg"] * PER_CLASS
    tokens_ND = torch.randn(len(labels) * TOKENS, D, generator=generator)
    owners_N = torch.arange(len(labels)).repeat_interleave(TOKENS)
    tokens_ND[:, 0] += 2.0 * torch.tensor([label == "pos" for label in labels]).repeat_interleave(TOKENS)
    return tokens_ND, owners_N, labels


def random_directions(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    W_DF = torch.randn(D, WIDTH, generator=generator)
    return W_DF / W_DF.norm(dim=0)


def probe(W_enc_DF: torch.Tensor) -> dict[int, float]:
    tokens_ND, owners_N, labels = class_tokens()
    tasks = probe_tasks(labels, [f"s{i}" for i in range(len(labels))], CONFIG)
    data = pooled_from_tokens("constructed", tokens_ND, owners_N, tasks, len(labels))
    result = probing_of(planted_dictionary(W_enc_DF, W_enc_DF.T.contiguous(), threshold=0.01), data, CONFIG)
    assert len(result.tasks) == 1  # two labels: one task
    return {0: result.dense_accuracy, **{k: result.sparse_accuracy(k) for k in CONFIG.ks}}


def test_a_planted_class_latent_gives_top_1_accuracy_near_1() -> None:
    W_enc_DF = random_directions(1)
    W_enc_DF[:, 7] = torch.eye(D)[0]  # latent 7 reads the class direction
    accuracy = probe(W_enc_DF)
    assert accuracy[1] >= 0.95


def test_random_directions_do_not_give_top_1_accuracy_near_1() -> None:
    accuracy = probe(random_directions(1))
    assert accuracy[1] <= 0.85


def test_each_label_is_probed_against_as_many_others_drawn_round_robin() -> None:
    labels = ["x"] * 6 + ["y"] * 6 + ["z"] * 2
    tasks = {
        task.name: task for task in probe_tasks(labels, [str(i) for i in range(14)], ProbingConfig(min_per_label=5))
    }
    assert sorted(tasks) == ["x", "y"]  # "z" has too few samples for a task of its own, but serves as a negative
    x = tasks["x"]
    assert x.samples_S.tolist() == [0, 1, 2, 3, 4, 5, 6, 12, 7, 13, 8, 9]
    assert x.positive_S.tolist() == [True] * 6 + [False] * 6


def test_mean_pool_averages_each_samples_rows() -> None:
    rows = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    pooled = mean_pool(rows, torch.tensor([0, 0, 2]), 3)
    assert pooled.tolist() == [[2.0, 1.0], [0.0, 0.0], [5.0, 5.0]]


def test_labelled_files_are_read_and_a_missing_field_is_named(tmp_path: Path) -> None:
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"text {i}", "stars": i % 2}) for i in range(4)) + "\n")
    assert read_labelled_rows(ProbeDataSpec(jsonl, "body", "stars"))[:2] == [("text 0", "0"), ("text 1", "1")]
    csv = tmp_path / "reviews.csv"
    csv.write_text("body,stars\ngood,1\nbad,0\n")
    assert read_labelled_rows(ProbeDataSpec(csv, "body", "stars")) == [("good", "1"), ("bad", "0")]
    with pytest.raises(ValueError, match=r"no field 'label'.*--label-field"):
        read_labelled_rows(ProbeDataSpec(csv, "body", "label"))


def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None, str]]:
    """Replace datasets.load_dataset by a local two-class dataset (a class-label field), recording each call."""
    import datasets

    calls: list[tuple[str, str | None, str]] = []
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def load_dataset(name: str, config: str | None = None, *, split: str) -> datasets.Dataset:
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"sentence": ["awful", "great", ""], "label": [0, 1, 1]}, features=features)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_hub_dataset_is_read_with_online_and_its_class_names_become_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_hub(monkeypatch)
    spec = ProbeDataSpec(Path("hf:someone/reviews:plain"), "sentence", "label", online=True)
    assert read_labelled_rows(spec) == [("awful", "neg"), ("great", "pos")]
    assert calls == [("someone/reviews", "plain", "train")]


def test_a_hub_dataset_without_online_is_refused_saying_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAESCOPE_ONLINE", raising=False)
    calls = fake_hub(monkeypatch)
    with pytest.raises(ValueError, match=r"hf:someone/reviews.*Hugging Face dataset.*--online.*local"):
        read_labelled_rows(ProbeDataSpec(Path("hf:someone/reviews"), "sentence", "label"))
    assert calls == []


def test_a_hub_dataset_without_the_named_field_names_its_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(monkeypatch)
    with pytest.raises(ValueError, match=r"no field 'text'.*'sentence'"):
        read_labelled_rows(ProbeDataSpec(Path("hf:someone/reviews"), "text", "label", online=True))


def test_each_test_samples_outcome_is_kept_so_dictionaries_can_be_paired() -> None:
    tokens_ND, owners_N, labels = class_tokens()
    tasks = probe_tasks(labels, [f"s{i}" for i in range(len(labels))], CONFIG)
    data = pooled_from_tokens("constructed", tokens_ND, owners_N, tasks, len(labels))
    result = probing_of(planted_dictionary(random_directions(1), random_directions(1).T.contiguous()), data, CONFIG)
    (task,) = result.tasks
    for k in CONFIG.ks:
        assert len(task.test_correct[k]) == task.test
        assert abs(sum(task.test_correct[k]) / task.test - task.sparse_accuracy[k]) < 1e-6  # float32 mean
    saved = result.to_dict()["per_task"][0]["test_correct"]
    assert sorted(saved) == [str(k) for k in CONFIG.ks]
    assert set(saved["1"]) <= {0, 1}
