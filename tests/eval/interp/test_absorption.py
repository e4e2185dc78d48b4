"""First-letter absorption on constructed activations: a planted absorbing latent shows as absorption with the
hand-computed fraction, a dictionary without one shows none, and a letter split over two latents counts as
splitting."""

from __future__ import annotations

import torch
from interp_dictionaries import planted_dictionary

from saescope.eval.interp.absorption import AbsorptionConfig, absorption_of, letter_words_from_activations

LETTERS = ("a", "b", "c")
D = 32
PER_LETTER = 40  # words per letter: the first 28 train, the last 12 test
TRAIN = 28
#: Dimensions 0-2 carry the letters; 3-8 each one absorbed "a" word's own identity; 9-11 split "c"; 12+ noise.
ABSORBED_DIMS = range(3, 9)
SPLIT_DIMS = (9, 10)
NOISE_DIMS = slice(12, D)
#: Positions (within "a"'s 40 words) of the absorbed words: three in train, three in test.
ABSORBED_WORDS = (3, 10, 20, 30, 33, 36)
CONFIG = AbsorptionConfig(min_words_per_letter=1)


def letter_activations() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(acts, labels, test mask): each word is its letter's direction plus noise off the latents' dimensions;
    the absorbed "a" words also carry their own dimension; "c" words carry one of two sub-directions."""
    generator = torch.Generator().manual_seed(0)
    acts, labels, test = [], [], []
    for c, _ in enumerate(LETTERS):
        for i in range(PER_LETTER):
            x_D = torch.zeros(D)
            x_D[c] = 1.0
            x_D[NOISE_DIMS] = 0.3 * torch.randn(D - 12, generator=generator)
            if c == 0 and i in ABSORBED_WORDS:
                x_D[ABSORBED_DIMS[ABSORBED_WORDS.index(i)]] = 1.0
            if c == 2:
                x_D[SPLIT_DIMS[i % 2]] = 1.0
            acts.append(x_D)
            labels.append(c)
            test.append(i >= TRAIN)
    return torch.stack(acts), torch.tensor(labels), torch.tensor(test)


def unit(v_D: torch.Tensor) -> torch.Tensor:
    return v_D / v_D.norm()


def letter_dictionary(*, absorbing: bool, absorber_row_norm: float = 1.0) -> torch.nn.Module:
    """Latent 0 "a" (silenced by any absorbed word's own dimension), 1 "b", 2 and 3 the two halves of "c", 4-9 one
    per absorbed word: it fires on that word and writes "a" plus the word's dimension. Without ``absorbing``,
    latent 0 fires on every "a" word and latents 4-9 never fire."""
    eye = torch.eye(D)
    encoder = [eye[0] - (2.0 * eye[3:9].sum(0) if absorbing else 0.0), eye[1], eye[2] + eye[9] - eye[10],
               eye[2] + eye[10] - eye[9]]  # fmt: skip
    decoder = [eye[0], eye[1], unit(eye[2] + eye[9]), unit(eye[2] + eye[10])]
    for dim in ABSORBED_DIMS:  # the absorbers' codes scale inversely to their decoder rows: the same writes
        encoder.append(eye[dim] / absorber_row_norm if absorbing else torch.zeros(D))
        decoder.append(absorber_row_norm * unit(eye[0] + eye[dim]))
    return planted_dictionary(torch.stack(encoder, dim=1), torch.stack(decoder))


def run(absorbing: bool, absorber_row_norm: float = 1.0) -> dict[str, object]:
    acts, labels, test = letter_activations()
    words = tuple(f"{LETTERS[int(c)]}{i}" for i, c in enumerate(labels))
    data = letter_words_from_activations(words, LETTERS, labels, acts, CONFIG, test_N=test)
    dictionary = letter_dictionary(absorbing=absorbing, absorber_row_norm=absorber_row_norm)
    result = absorption_of(dictionary, data, CONFIG)  # type: ignore[arg-type]
    return {"result": result, "letters": {letter.letter: letter for letter in result.letters}}


def test_a_planted_absorbing_latent_shows_as_absorption_on_the_words_it_takes() -> None:
    outcome = run(absorbing=True)
    letters, result = outcome["letters"], outcome["result"]
    a = letters["a"]  # type: ignore[index]
    assert a.probe_true_positives == 12  # the probe gets every test "a" word right
    assert a.main_latents == (0,)  # each absorber adds one train word: too little F1 to count as a split
    # Three of the 12 test "a" words are absorbed: fraction 1 each (the main latent is silent), 0 elsewhere.
    assert abs(a.mean_absorption_fraction - 3 / 12) < 1e-6
    assert a.full_absorptions == 3
    assert letters["b"].mean_absorption_fraction == 0.0  # type: ignore[index]
    assert abs(result.mean_absorption_fraction - (3 / 12) / 3) < 1e-6  # type: ignore[attr-defined]
    assert abs(result.full_absorption_rate - (3 / 12) / 3) < 1e-6  # type: ignore[attr-defined]


def test_without_an_absorbing_latent_there_is_no_absorption() -> None:
    result = run(absorbing=False)["result"]
    assert result.mean_absorption_fraction == 0.0  # type: ignore[attr-defined]
    assert result.full_absorption_rate == 0.0  # type: ignore[attr-defined]


def test_a_letter_split_over_two_latents_counts_as_splitting() -> None:
    outcome = run(absorbing=True)
    c = outcome["letters"]["c"]  # type: ignore[index]
    assert sorted(c.main_latents) == [2, 3]
    assert outcome["result"].letters_with_splitting == 1  # type: ignore[attr-defined]
    assert c.mean_absorption_fraction == 0.0


def test_absorbers_count_by_what_they_write_whatever_their_decoder_row_norm() -> None:
    """Absorbers with decoder rows of norm 1.8 and codes 1/1.8: each writes 0.7 of the word's probe projection,
    as the unit-norm absorbers do, though its code times its cosine (0.39) is under the 0.4 share."""
    a = run(absorbing=True, absorber_row_norm=1.8)["letters"]["a"]  # type: ignore[index]
    assert abs(a.mean_absorption_fraction - 3 / 12) < 1e-6
    assert a.full_absorptions == 3


def test_the_main_latents_f1_says_how_well_they_detect_their_letter() -> None:
    absorbed = run(absorbing=True)["letters"]["a"]  # type: ignore[index]
    # Silent on the 3 absorbed of the 12 test "a" words, never firing elsewhere: recall 9/12, precision 1.
    assert abs(absorbed.main_latent_f1 - 2 * 0.75 / 1.75) < 1e-6
    assert run(absorbing=False)["letters"]["a"].main_latent_f1 == 1.0  # type: ignore[index]
