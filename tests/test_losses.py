"""Each loss against a value computed by hand (numpy), its invariances, and finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ferjax import losses as L
from ferjax.data.labels import class_histogram, parse_rafdb_labels

LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [-0.5, 1.5, 0.0]], np.float32)
LABELS = np.array([0, 2, 1])
WEIGHTS = np.array([0.5, 2.0, 1.0], np.float32)

RAF_TRAIN = [1290, 281, 717, 4772, 1982, 705, 2524]
RAF_TEST = [329, 74, 160, 1185, 478, 162, 680]


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(z, y):
    return -np_log_softmax(z)[np.arange(len(y)), y]


# ---------------------------------------------------------------- cross-entropy and weights

def test_weighted_cross_entropy_both_reductions_by_hand():
    ce = np_ce(LOGITS, LABELS)
    w = WEIGHTS[LABELS]
    got_torch = L.weighted_cross_entropy(LOGITS, LABELS, WEIGHTS, "torch_weighted_mean")
    got_mean = L.weighted_cross_entropy(LOGITS, LABELS, WEIGHTS, "mean")
    np.testing.assert_allclose(got_torch, (w * ce).sum() / w.sum(), rtol=1e-6)
    np.testing.assert_allclose(got_mean, (w * ce).mean(), rtol=1e-6)
    np.testing.assert_allclose(L.weighted_cross_entropy(LOGITS, LABELS), ce.mean(), rtol=1e-6)


def test_weighted_cross_entropy_matches_torch_weight_argument():
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS),
                                                 weight=torch.tensor(WEIGHTS))
    got = L.weighted_cross_entropy(LOGITS, LABELS, WEIGHTS, "torch_weighted_mean")
    np.testing.assert_allclose(got, expected.item(), rtol=1e-6)


def test_masked_rows_do_not_count():
    mask = np.array([1.0, 1.0, 0.0])
    full = L.weighted_cross_entropy(LOGITS[:2], LABELS[:2], WEIGHTS)
    np.testing.assert_allclose(L.weighted_cross_entropy(LOGITS, LABELS, WEIGHTS, mask=mask),
                               full, rtol=1e-6)
    np.testing.assert_allclose(L.weighted_cross_entropy(LOGITS, LABELS, WEIGHTS, "mean", mask),
                               L.weighted_cross_entropy(LOGITS[:2], LABELS[:2], WEIGHTS, "mean"),
                               rtol=1e-6)


def test_class_weight_formulas_by_hand():
    counts = np.array([10, 30, 60])
    np.testing.assert_allclose(L.class_weights(counts, "inv_norm_K"), 100 / (3 * counts),
                               rtol=1e-6)
    np.testing.assert_allclose(L.class_weights(counts, "max_ratio"), 60 / counts, rtol=1e-6)
    np.testing.assert_allclose(L.class_weights(counts, "mek_style"), 100 / (10 * counts),
                               rtol=1e-6)
    sq = counts ** -0.5
    np.testing.assert_allclose(L.class_weights(counts, "sqrt_inv"), sq / sq.mean(), rtol=1e-6)
    en = (1 - 0.9999) / (1 - 0.9999 ** counts)
    np.testing.assert_allclose(L.class_weights(counts, "effective_num"), en / en.mean(),
                               rtol=1e-5)
    np.testing.assert_array_equal(L.class_weights(counts, "none"), 1.0)
    # inv_norm_K keeps the total weight: Σ n_c w_c = N.
    np.testing.assert_allclose((counts * L.class_weights(counts)).sum(), counts.sum(), rtol=1e-6)


def test_class_weights_refuse_an_empty_class_and_unknown_scheme():
    with pytest.raises(ValueError, match=r"classes \[1\] have no training examples"):
        L.class_weights([5, 0, 3])
    with pytest.raises(ValueError, match="unknown_scheme"):
        L.class_weights([5, 3], "unknown_scheme")


def test_label_smoothing_all_matches_optax():
    expected = optax.softmax_cross_entropy(LOGITS, optax.smooth_labels(
        jax.nn.one_hot(LABELS, 3), 0.2)).mean()
    np.testing.assert_allclose(L.label_smoothing_loss(LOGITS, LABELS, 0.2, spread="all"),
                               expected, rtol=1e-6)


def test_label_smoothing_others_by_hand():
    eps = 0.2
    t = np.full((3, 3), eps / 2)
    t[np.arange(3), LABELS] = 1 - eps
    expected = -(t * np_log_softmax(LOGITS)).sum(-1).mean()
    np.testing.assert_allclose(L.label_smoothing_loss(LOGITS, LABELS, eps), expected, rtol=1e-6)


# ---------------------------------------------------------------- RAF-DB facts (real file)

def test_rafdb_counts_and_rebalancing_weights_from_the_real_label_file(rafdb_label_file):
    rows = parse_rafdb_labels(rafdb_label_file)
    train = class_histogram([r.label for r in rows if r.split == "train"], 7)
    test = class_histogram([r.label for r in rows if r.split == "test"], 7)
    assert train.tolist() == RAF_TRAIN and test.tolist() == RAF_TEST
    assert train.sum() == 12_271 and test.sum() == 3_068
    # MEK's hard-coded RAF-DB weights are exactly N / (10 n_k).
    mek = [0.95124031, 4.36690391, 1.71143654, 0.25714585, 0.6191221, 1.74056738, 0.48617274]
    np.testing.assert_allclose(L.rebalancing_weights(train), mek, rtol=1e-6)
    np.testing.assert_allclose(L.class_weights(train, "inv_norm_K"),
                               [1.359, 6.238, 2.445, 0.367, 0.885, 2.487, 0.695], atol=6e-4)
    np.testing.assert_allclose(L.class_weights(train, "max_ratio"),
                               [3.699, 16.98, 6.656, 1.0, 2.408, 6.769, 1.891], atol=6e-3)
    np.testing.assert_allclose(L.reversed_sampling_probabilities(train),
                               [.0939, .4310, .1689, .0254, .0611, .1718, .0480], atol=6e-4)


def test_rafdb_parser_names_file_and_line_of_bad_rows(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("train_00001.jpg 5\ntrain_00002.jpg 9\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: label 9 outside"):
        parse_rafdb_labels(f)
    f.write_text("val_00001.jpg 1")
    with pytest.raises(ValueError, match="labels.txt:1: .*neither 'train_' nor 'test_'"):
        parse_rafdb_labels(f)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        parse_rafdb_labels(tmp_path / "missing.txt")


# ---------------------------------------------------------------- RSL

def test_rsl_table_matches_the_spec_for_rafdb():
    table = np.asarray(L.rsl_target_table(L.rebalancing_weights(RAF_TRAIN), 0.3))
    spec_rows = {0: [.700, .143, .056, .008, .020, .057, .016],
                 1: [.050, .700, .089, .013, .032, .091, .025],
                 3: [.029, .133, .052, .700, .019, .053, .015],
                 6: [.030, .136, .053, .008, .019, .054, .700]}
    for row, values in spec_rows.items():
        np.testing.assert_allclose(table[row], values, atol=6e-4)
    np.testing.assert_allclose(table.sum(1), 1.0, rtol=1e-6)


def test_rsl_by_hand():
    eps, w = 0.3, np.array([1.0, 3.0, 6.0])
    t = np.zeros((3, 3))
    for i, y in enumerate(LABELS):
        others = [k for k in range(3) if k != y]
        t[i, y] = 1 - eps
        for k in others:
            t[i, k] = eps * w[k] / w[others].sum()
    expected = -(t * np_log_softmax(LOGITS)).sum(-1).mean()
    np.testing.assert_allclose(L.rebalanced_smooth_labels_loss(LOGITS, LABELS, w, eps), expected,
                               rtol=1e-6)


def test_rsl_with_uniform_counts_is_ordinary_label_smoothing():
    w = L.rebalancing_weights([50, 50, 50])
    np.testing.assert_allclose(L.rebalanced_smooth_labels_loss(LOGITS, LABELS, w, 0.3),
                               L.label_smoothing_loss(LOGITS, LABELS, 0.3), rtol=1e-6)
    # RSL only depends on the weights' ratios.
    np.testing.assert_allclose(L.rebalanced_smooth_labels_loss(LOGITS, LABELS, WEIGHTS * 7, 0.3),
                               L.rebalanced_smooth_labels_loss(LOGITS, LABELS, WEIGHTS, 0.3),
                               rtol=1e-6)


# ---------------------------------------------------------------- attention consistency

CAM = np.random.default_rng(0).normal(size=(2, 3, 4, 3)).astype(np.float32)
CAM_F = np.random.default_rng(1).normal(size=(2, 3, 4, 3)).astype(np.float32)
CAM3 = np.random.default_rng(2).normal(size=(3, 3, 4, 3)).astype(np.float32)
CAM3_F = np.random.default_rng(3).normal(size=(3, 3, 4, 3)).astype(np.float32)


def test_eac_and_rac_by_hand():
    diff2 = (CAM - CAM_F[:, :, ::-1, :]) ** 2
    np.testing.assert_allclose(L.attention_consistency_loss(CAM, CAM_F), diff2.mean(), rtol=1e-6)
    per_class = diff2.mean(axis=(1, 2))  # (N, K)
    expected = (per_class * WEIGHTS).sum(1).mean()
    np.testing.assert_allclose(L.rebalanced_attention_consistency_loss(CAM, CAM_F, WEIGHTS),
                               expected, rtol=1e-6)


def test_consistency_is_zero_for_a_flip_symmetric_map():
    mirrored = CAM[:, :, ::-1, :]
    assert float(L.attention_consistency_loss(CAM, mirrored)) == 0.0
    assert float(L.rebalanced_attention_consistency_loss(CAM, mirrored, WEIGHTS)) == 0.0


def test_rac_with_unit_weights_is_k_times_eac():
    np.testing.assert_allclose(L.rebalanced_attention_consistency_loss(CAM, CAM_F, np.ones(3)),
                               3 * L.attention_consistency_loss(CAM, CAM_F), rtol=1e-6)


# ---------------------------------------------------------------- RUL

def test_uncertainty_mix_by_hand():
    mu = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], np.float32)
    u = np.array([1.0, 3.0, 2.0], np.float32)
    perm = np.array([1, 2, 0])
    mixed, lam = L.relative_uncertainty_mix(mu, u, perm)
    np.testing.assert_allclose(lam, [1 / 4, 3 / 5, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(mixed[0], 0.25 * mu[0] + 0.75 * mu[1], rtol=1e-6)
    np.testing.assert_allclose(mixed[2], 2 / 3 * mu[2] + 1 / 3 * mu[0], rtol=1e-6)
    # Pairing a sample with itself leaves it unchanged.
    same, lam_same = L.relative_uncertainty_mix(mu, u, np.arange(3))
    np.testing.assert_allclose(same, mu)
    np.testing.assert_allclose(lam_same, 0.5)


def test_rul_add_up_loss_by_hand():
    perm = np.array([2, 0, 1])
    ce_a, ce_b = np_ce(LOGITS, LABELS), np_ce(LOGITS, LABELS[perm])
    np.testing.assert_allclose(L.rul_add_up_loss(LOGITS, LABELS, perm),
                               0.5 * ce_a.mean() + 0.5 * ce_b.mean(), rtol=1e-6)
    wa, wb = WEIGHTS[LABELS], WEIGHTS[LABELS[perm]]
    np.testing.assert_allclose(
        L.rul_add_up_loss(LOGITS, LABELS, perm, WEIGHTS, "mean"),
        (0.5 * wa * ce_a + 0.5 * wb * ce_b).mean(), rtol=1e-6)
    np.testing.assert_allclose(
        L.rul_add_up_loss(LOGITS, LABELS, perm, WEIGHTS, "torch_weighted_mean"),
        0.5 * (wa * ce_a).sum() / wa.sum() + 0.5 * (wb * ce_b).sum() / wb.sum(), rtol=1e-6)
    # The identity pairing is plain cross-entropy.
    np.testing.assert_allclose(L.rul_add_up_loss(LOGITS, LABELS, np.arange(3)), ce_a.mean(),
                               rtol=1e-6)


def test_sample_permutation_is_a_permutation():
    perm = np.asarray(L.sample_permutation(jax.random.key(0), 64))
    assert sorted(perm.tolist()) == list(range(64))
    # A group as large as the batch is the whole-batch permutation.
    np.testing.assert_array_equal(L.sample_permutation(jax.random.key(0), 64, 64), perm)


def test_grouped_permutation_pairs_within_each_group():
    perm = np.asarray(L.sample_permutation(jax.random.key(3), 64, 16))
    assert sorted(perm.tolist()) == list(range(64))
    np.testing.assert_array_equal(perm // 16, np.arange(64) // 16)
    assert (perm != np.arange(64)).sum() > 32  # groups are shuffled, not left in place
    # Groups draw different pairings.
    assert len({tuple(perm[g * 16:(g + 1) * 16] - g * 16) for g in range(4)}) == 4
    with pytest.raises(ValueError, match="mix_group_size"):
        L.sample_permutation(jax.random.key(3), 60, 16)


# ---------------------------------------------------------------- BBN

def test_cumulative_alpha_schedule():
    assert L.cumulative_alpha(1, 100) == 1.0
    np.testing.assert_allclose(L.cumulative_alpha(51, 100), 0.75)
    np.testing.assert_allclose(L.cumulative_alpha(100, 100), 1 - (99 / 100) ** 2)
    np.testing.assert_allclose(L.cumulative_alpha(90, 90, "official"), 1 - (89 / 100) ** 2)
    np.testing.assert_allclose(L.cumulative_alpha(90, 90, "paper"), 1 - (89 / 90) ** 2)
    with pytest.raises(ValueError, match="epoch 0 outside"):
        L.cumulative_alpha(0, 10)


def test_bbn_loss_by_hand():
    labels_r = np.array([1, 1, 0])
    expected = 0.3 * np_ce(LOGITS, LABELS).mean() + 0.7 * np_ce(LOGITS, labels_r).mean()
    np.testing.assert_allclose(L.bbn_loss(LOGITS, LABELS, labels_r, 0.3), expected, rtol=1e-6)
    np.testing.assert_allclose(L.bbn_loss(LOGITS, LABELS, labels_r, 1.0),
                               np_ce(LOGITS, LABELS).mean(), rtol=1e-6)


def test_every_loss_with_a_mask_is_the_loss_of_the_unmasked_rows():
    """A padding row (mask 0) changes nothing: each loss over 3 rows with the last masked
    equals the loss over the first 2. RUL also drops the rows paired with a padding row."""
    mask, two = np.array([1.0, 1.0, 0.0]), slice(0, 2)
    labels_r = np.array([1, 1, 0])
    losses = [
        (lambda m, r: L.label_smoothing_loss(LOGITS[r], LABELS[r], 0.2, mask=m)),
        (lambda m, r: L.rebalanced_smooth_labels_loss(LOGITS[r], LABELS[r], WEIGHTS, 0.3, m)),
        (lambda m, r: L.attention_consistency_loss(CAM3[r], CAM3_F[r], m)),
        (lambda m, r: L.rebalanced_attention_consistency_loss(CAM3[r], CAM3_F[r], WEIGHTS, m)),
        (lambda m, r: L.bbn_loss(LOGITS[r], LABELS[r], labels_r[r], 0.3, m)),
    ]
    for loss in losses:
        np.testing.assert_allclose(loss(mask, slice(None)), loss(None, two), rtol=1e-6)
    # RUL: pairs (0, 1) and (1, 0) are real; row 2 is padding and paired with itself.
    perm = np.array([1, 0, 2])
    for reduction in ("mean", "torch_weighted_mean"):
        np.testing.assert_allclose(
            L.rul_add_up_loss(LOGITS, LABELS, perm, WEIGHTS, reduction, mask),
            L.rul_add_up_loss(LOGITS[two], LABELS[two], perm[two], WEIGHTS, reduction),
            rtol=1e-6)
    # A real row paired with a padding row does not count either.
    np.testing.assert_allclose(
        L.rul_add_up_loss(LOGITS, LABELS, np.array([2, 1, 0]), None, "mean", mask),
        L.rul_add_up_loss(LOGITS[1:2], LABELS[1:2], np.array([0])), rtol=1e-6)


# ---------------------------------------------------------------- registry and gradients

def test_every_registered_loss_has_finite_gradients_at_extreme_logits():
    logits = jnp.array([[1e4, -1e4, 0.0], [-3e3, 2e3, 1e3]], jnp.float32)
    labels = jnp.array([1, 0])
    cam = jnp.asarray(CAM[:, :, :, :3] * 1e3)
    cam_f = jnp.asarray(CAM_F * 1e3)
    calls = {
        "cross_entropy": lambda z: L.weighted_cross_entropy(z, labels, WEIGHTS),
        "label_smoothing": lambda z: L.label_smoothing_loss(z, labels, 0.1),
        "rsl": lambda z: L.rebalanced_smooth_labels_loss(z, labels, WEIGHTS, 0.3),
        "eac": lambda c: L.attention_consistency_loss(c, cam_f),
        "rac": lambda c: L.rebalanced_attention_consistency_loss(c, cam_f, WEIGHTS),
        "rul_add_up": lambda z: L.rul_add_up_loss(z, labels, jnp.array([1, 0]), WEIGHTS),
        "bbn": lambda z: L.bbn_loss(z, labels, labels[::-1], 0.4),
    }
    assert sorted(calls) == L.LOSSES.names()
    for name, fn in calls.items():
        arg = cam if name in ("eac", "rac") else logits
        value, grad = jax.value_and_grad(fn)(arg)
        assert np.isfinite(float(value)), name
        assert np.all(np.isfinite(np.asarray(grad))), name
