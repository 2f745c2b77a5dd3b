"""Hybrid fusion that listens: weights learned by probing, keyword hits
weighed by the query words they hold, scores in [0, 1]. No model needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragged.errors import ConfigurationError
from ragged.query.fusion import FUSION_K, Ranking, coverage, fuse, words
from ragged.query.modes import parse_mode
from ragged.query.weights import (
    CACHE,
    MIN_PROBES,
    PROBE_WORDS,
    Probe,
    SignalWeights,
    cached_weights,
    learn_weights,
    listening,
    probes,
)


def ranking(positions: list[int], confidence: list[float] | None = None) -> Ranking:
    scores = np.linspace(1.0, 0.0, len(positions))
    return Ranking(np.array(positions, dtype=np.int64), scores,
                   None if confidence is None else np.array(confidence))


def order(fused: list) -> list[int]:  # type: ignore[type-arg]
    return [f.position for f in fused]


TEXT = ranking([3, 1, 4, 0, 2])  # the listening ranking: page 3 is the answer
NOISE = ranking([2, 0, 4, 1, 3])  # a ranking that knows nothing, in the opposite order


def test_a_ranking_of_weight_zero_does_not_move_the_listening_one() -> None:
    heard = fuse({"text": TEXT, "vision": NOISE}, 5, SignalWeights(vision=0.0))
    assert order(heard) == [3, 1, 4, 0, 2]
    alike = fuse({"text": TEXT, "vision": NOISE}, 5)  # equal weights: the noise drags page 3 down
    assert order(alike)[0] != 3


def test_pages_found_only_by_a_silent_ranking_come_last_in_its_order() -> None:
    fused = fuse({"text": ranking([3, 1]), "vision": ranking([7, 6, 3])}, 5, SignalWeights(vision=0.0))
    assert order(fused) == [3, 1, 7, 6]
    assert fused[2].score == fused[3].score == 0.0
    assert fused[2].signals == {"vision": 1}


def test_scores_read_from_zero_to_one() -> None:
    fused = fuse({"text": ranking([5, 1]), "keyword": ranking([5]), "vision": ranking([5, 1])}, 2)
    assert fused[0].score == pytest.approx(1.0)  # first everywhere
    weights = SignalWeights(vision=0.5)
    second = fuse({"text": ranking([5, 1]), "vision": ranking([5, 1])}, 2, weights)[1]
    most = 1.5 / (FUSION_K + 1)
    assert second.score == pytest.approx((1 / (FUSION_K + 2) + 0.5 / (FUSION_K + 2)) / most)
    assert 0 < second.score < 1


def test_a_keyword_hit_on_one_word_of_a_question_does_not_outvote_the_text_model() -> None:
    question = "steps to get reimbursed by the insurer"
    pages = ["Follow these steps to assemble the shelf.", "How to make a claim: the insurer reimburses you."]
    keyword = Ranking(np.array([0, 1]), np.array([4.0, 2.0]), coverage(question, pages))
    text = ranking([1, 0])
    assert order(fuse({"text": text, "keyword": keyword}, 2))[0] == 1
    exact = Ranking(np.array([0]), np.array([4.0]), coverage("assemble the shelf", pages[:1]))
    assert order(fuse({"text": text, "keyword": exact}, 2))[0] == 0  # every word there: the keyword hit wins


def test_coverage_counts_content_words_with_their_endings_cut() -> None:
    assert words("Steps to get the Parquet exports") == {"step", "get", "parquet", "export"}
    assert words("HX-2231 pdb.set_trace()") == {"hx", "2231", "pdb", "set", "trace"}
    shares = coverage("parquet export steps", ["Export to Parquet", "nothing here", "Exporting parquet in steps"])
    assert shares.tolist() == pytest.approx([(2 / 3) ** 2, 0.0, 1.0])
    assert coverage("what is the", ["what is the answer"]).tolist() == [0.0]  # stop words only


def probed(n: int) -> list[Probe]:
    return [Probe(i, f"words of page {i}") for i in range(n)]


def test_listening_is_one_for_a_signal_that_finds_each_page_and_zero_for_noise() -> None:
    assert listening(np.eye(12) + 0.01) == pytest.approx(1.0)
    assert listening(np.ones((12, 12))) == pytest.approx(0.0, abs=0.05)  # every page alike: a tie is no win
    rng = np.random.default_rng(0)
    noise = [listening(rng.normal(size=(24, 24))) for _ in range(20)]
    assert max(noise) < 0.2 and np.mean(noise) < 0.08
    assert listening(np.roll(np.eye(12), 1, axis=1)) == 0.0  # always another page first


def test_weights_are_learned_from_probes_and_left_at_one_without_enough() -> None:
    rng = np.random.default_rng(1)
    weights = learn_weights(probed(16), lambda q, p: rng.normal(size=(len(q), len(p))),
                            lambda q, p: np.eye(len(q)))
    assert weights.vision < 0.3 and weights.text == pytest.approx(1.0) and weights.probes == 16
    assert weights.notices() and "image" in weights.notices()[0]
    few = learn_weights(probed(MIN_PROBES - 1), lambda q, p: np.zeros((len(q), len(p))), None)
    assert few == SignalWeights()  # no evidence either way


def test_probes_are_runs_of_a_pages_own_words() -> None:
    text = " ".join(f"w{i}" for i in range(30))
    found = probes([(0, text), (1, "too short"), (2, text)])
    assert [p.position for p in found] == [0, 2]
    assert found[0].query.split() == [f"w{i}" for i in range(10, 10 + PROBE_WORDS)]
    assert len(probes([(i, text) for i in range(100)], count=24)) == 24


def test_weights_are_cached_under_the_index_and_relearned_when_the_key_changes(tmp_path: Path) -> None:
    calls: list[int] = []

    def learn() -> SignalWeights:
        calls.append(1)
        return SignalWeights(vision=0.1, probes=9)

    key = {"vision": "tiny-colpali", "probes": ["a b c"]}
    assert cached_weights(tmp_path, key, learn).vision == 0.1
    assert cached_weights(tmp_path, key, learn).vision == 0.1 and len(calls) == 1
    assert json.loads((tmp_path / CACHE).read_text())["key"] == key
    cached_weights(tmp_path, {**key, "probes": ["d e f"]}, learn)
    assert len(calls) == 2
    (tmp_path / CACHE).write_text("{not json")
    assert cached_weights(tmp_path, key, learn).vision == 0.1 and len(calls) == 3
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert cached_weights(blocked, key, learn).vision == 0.1  # cannot be written: learned all the same


def test_the_unknown_mode_error_names_auto() -> None:
    with pytest.raises(ConfigurationError, match="use auto, vision, text, keyword or hybrid"):
        parse_mode("fuzzy", True)
