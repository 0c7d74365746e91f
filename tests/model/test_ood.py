"""The out-of-distribution score: percentiles against the archive's own spectra, as documented."""

from __future__ import annotations

import numpy as np
import pytest

from model.ood import SAMPLE, WARN_AT, OODReference, sample_rows


@pytest.fixture()
def reference() -> OODReference:
    return OODReference.build(np.linspace(0.01, 0.02, 101), np.linspace(1.0, 2.0, 101))


def test_typical_values_score_zero_and_extremes_one(reference):
    assert reference.score(0.0149, 1.49).score == 0.0  # both just below the archive's median
    assert reference.score(0.001, 0.1).score == 0.0
    assert reference.score(0.5, 1.0).score == 1.0  # beyond every archive reconstruction error
    assert reference.score(0.01, 9.0).score == 1.0  # farther than any archive nearest neighbour
    assert reference.score(float("nan"), 1.0).score == 1.0
    at_95 = reference.score(0.0195, 1.2)
    assert at_95.recon_percentile == pytest.approx(96 / 101)
    assert at_95.score == pytest.approx(2 * 96 / 101 - 1)


def test_reasons_name_what_is_unusual(reference):
    score = reference.score(0.5, 1.5)
    assert score.weak and score.score >= WARN_AT
    (reason,) = score.reasons()
    assert "reconstructs it worse than 100%" in reason
    both = reference.score(0.5, 9.0).reasons()
    assert len(both) == 2 and "nearest archive spectrum is farther" in both[1]


def test_save_and_load(tmp_path, reference):
    path = tmp_path / "ood.npy"
    assert OODReference.load(path) is None
    reference.save(path)
    loaded = OODReference.load(path)
    np.testing.assert_array_equal(loaded.recon_error, reference.recon_error)
    np.testing.assert_array_equal(loaded.nn_distance, reference.nn_distance)


def test_sample_rows():
    assert list(sample_rows(5)) == [0, 1, 2, 3, 4]
    rows = sample_rows(SAMPLE * 3)
    assert len(rows) == SAMPLE == len(set(rows.tolist())) and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(rows, sample_rows(SAMPLE * 3))  # seeded
