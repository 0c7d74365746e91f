"""The out-of-distribution score: percentiles against the archive's own spectra, as documented."""

from __future__ import annotations

import numpy as np
import pytest

from model.ood import SAMPLE, WARN_AT, OODReference, line_signal, sample_rows, structured_residual


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


def test_a_spectrum_without_lines_scores_high_on_line_signal():
    with_signal = OODReference.build(
        np.linspace(0.01, 0.02, 101), np.linspace(1.0, 2.0, 101), np.linspace(0.05, 0.15, 101)
    )
    typical = with_signal.score(0.012, 1.2, 0.11)
    featureless = with_signal.score(0.012, 1.2, 0.001)
    assert typical.score == 0.0 and featureless.score == 1.0
    (reason,) = featureless.reasons()
    assert "fewer lines and bands" in reason
    assert with_signal.score(0.012, 1.2).score == 0.0  # no signal given: it does not count


def test_residual_and_line_signal_see_through_white_noise():
    rng = np.random.default_rng(0)
    x = np.arange(2000)
    star = 1 - 0.3 * np.exp(-0.5 * ((x[None, :] % 50 - 25) / 2.0) ** 2).repeat(2, axis=0)
    good = np.ones_like(star, dtype=bool)
    noisy = star + rng.normal(0, 0.1, star.shape)
    # Lines are found whatever the noise; a flat noisy line has none.
    signal = line_signal(
        np.vstack([star[:1], noisy[:1], 1 + rng.normal(0, 0.1, (1, 2000))]), good[:1].repeat(3, 0)
    )
    assert signal[1] == pytest.approx(signal[0], rel=0.1) and signal[2] < 0.02
    # A perfect reconstruction of a noisy star leaves no structured residual; a missed line does.
    assert structured_residual(star, noisy, good)[0] < 0.01
    missed = structured_residual(np.ones_like(star), noisy, good)[0]
    assert missed == pytest.approx(signal[0], rel=0.1)
    # A reconstruction sharper than a low-resolution upload is blurred before it is compared.
    from scipy.ndimage import gaussian_filter1d

    blurred = gaussian_filter1d(star, 1.2, axis=1)
    assert structured_residual(star, blurred, good)[0] < 0.005
