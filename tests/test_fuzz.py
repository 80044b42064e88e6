"""Property tests (hypothesis): losses over random shapes, class counts (empty classes
included) and extreme logits give finite values or a clear error; label parsers never
crash on arbitrary text with anything but a ValueError naming the line."""

import string

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ferjax import losses as L
from ferjax.data.labels import class_histogram, parse_rafdb_labels

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def batches(draw):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(2, 8))
    # Beyond ~1e38 the logit gap itself overflows float32; the training loop catches that.
    scale = draw(st.sampled_from([1.0, 1e3, 1e6, 1e30]))
    logits = draw(st.lists(st.floats(-1, 1), min_size=n * k, max_size=n * k))
    logits = np.asarray(logits, np.float32).reshape(n, k) * np.float32(scale)
    labels = np.asarray(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    counts = np.asarray(draw(st.lists(st.integers(0, 50), min_size=k, max_size=k)))
    return logits, labels, counts


@FUZZ
@given(batches())
def test_classification_losses_are_finite_or_refuse_empty_classes(batch):
    logits, labels, counts = batch
    for scheme in L.classification.CLASS_WEIGHT_SCHEMES:
        if scheme != "none" and np.any(counts == 0):
            with pytest.raises(ValueError, match="no training examples"):
                L.class_weights(counts, scheme)
            continue
        w = L.class_weights(counts, scheme)
        assert np.all(np.isfinite(w)) and np.all(w > 0)
        for reduction in L.classification.REDUCTIONS:
            assert np.isfinite(float(L.weighted_cross_entropy(logits, labels, w, reduction)))
    assert np.isfinite(float(L.label_smoothing_loss(logits, labels, 0.1)))
    perm = np.random.default_rng(0).permutation(len(labels))
    assert np.isfinite(float(L.rul_add_up_loss(logits, labels, perm)))
    assert np.isfinite(float(L.bbn_loss(logits, labels, labels[::-1], 0.3)))


@FUZZ
@given(batches(), st.floats(0.0, 0.99))
def test_rsl_is_finite_for_any_positive_weights(batch, epsilon):
    logits, labels, counts = batch
    weights = L.rebalancing_weights(np.maximum(counts, 1))
    value = L.rebalanced_smooth_labels_loss(logits, labels, weights, epsilon)
    assert np.isfinite(float(value))
    table = np.asarray(L.rsl_target_table(weights, epsilon))
    np.testing.assert_allclose(table.sum(1), 1.0, rtol=1e-5)


@FUZZ
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 8),
       st.sampled_from([1.0, 1e3, 1e15]))
def test_consistency_losses_are_finite_and_non_negative(n, h, w, k, scale):
    rng = np.random.default_rng(n * 100 + h * 10 + w)
    cam = (rng.normal(size=(n, h, w, k)) * scale).astype(np.float32)
    flipped = (rng.normal(size=(n, h, w, k)) * scale).astype(np.float32)
    weights = rng.uniform(0.1, 5, k).astype(np.float32)
    for value in (L.attention_consistency_loss(cam, flipped),
                  L.rebalanced_attention_consistency_loss(cam, flipped, weights)):
        assert np.isfinite(float(value)) and float(value) >= 0


@FUZZ
@given(st.lists(st.integers(0, 30), min_size=2, max_size=8))
def test_reversed_sampler_probabilities_are_a_distribution(counts):
    counts = np.asarray(counts)
    if counts.max() == 0:
        with pytest.raises(ValueError, match="at least one class"):
            L.reversed_sampling_probabilities(counts)
        return
    p = L.reversed_sampling_probabilities(counts)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-9)
    assert np.all(p[counts == 0] == 0) and np.all(p[counts > 0] > 0)


@FUZZ
@given(st.text(alphabet=string.printable, max_size=300))
def test_rafdb_parser_accepts_valid_rows_or_names_the_bad_line(tmp_path, text):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    try:
        rows = parse_rafdb_labels(path)
    except ValueError as e:
        assert "labels.txt:" in str(e)
        return
    for row in rows:
        assert 0 <= row.label <= 6 and row.split in ("train", "test")


@FUZZ
@given(st.lists(st.integers(-2, 9), max_size=30))
def test_class_histogram_counts_or_names_out_of_range_labels(labels):
    if any(v < 0 or v >= 7 for v in labels):
        with pytest.raises(ValueError, match="labels outside 0..6"):
            class_histogram(labels, 7)
    else:
        assert class_histogram(labels, 7).sum() == len(labels)


def test_extreme_logits_keep_gradients_finite():
    import jax
    logits = jnp.array([[3e38, -3e38, 0.0]], jnp.float32)
    grad = jax.grad(lambda z: L.weighted_cross_entropy(z, jnp.array([1])))(logits)
    assert np.all(np.isfinite(np.asarray(grad)))
