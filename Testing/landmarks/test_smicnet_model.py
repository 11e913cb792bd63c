"""SMICNet model and preprocessing: shapes, the exact parameter count of the spec table, determinism,
Keras' per-patch quantisation edge cases and the volume-level metal zeroing.

These run without the published weights (random, Keras-style initialised models); the parity with the
authors' Keras outputs is in ``test_smicnet_parity.py``.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from CochleaCommonLib.errors import InvalidInputError
from CochleaLandmarksLib import smicnet_model as sm
from CochleaLandmarksLib import smicnet_preprocess as pp


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread(torch):
    """Small forward passes on one thread: on a busy 2-core CI machine OpenMP spinning makes them 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model(torch):
    torch.manual_seed(0)
    return sm.build_smicnet()


def spec_table_counts() -> dict[str, int]:
    """Parameter counts recomputed from the architecture table of seed-methods.md section 1.4."""
    counts = {"stem": (9 + 1) + 4 * 1 + (1 + 1) * 16}  # depthwise 3x3 + bias, BN(1), conv 1->16
    cin = 16
    for s, f in enumerate((32, 64, 128, 256), start=1):
        counts[f"stage{s}"] = 10 * cin + 4 * cin + (cin + 1) * f + (cin + 1) * f  # dw, BN, pointwise, shortcut
        cin = f
    counts["dense"] = (256 + 1) * 384
    counts["dense_1"] = (384 + 1) * 4
    return counts


# --- torch is optional ------------------------------------------------------------------------------
def test_modules_import_and_preprocess_without_torch():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import CochleaLandmarksLib
        from CochleaLandmarksLib import keras_import, smicnet_model, smicnet_preprocess
        from CochleaCommonLib.errors import MissingDependencyError
        assert smicnet_preprocess.quantize_patches(np.arange(6.0).reshape(2, 3)).dtype == np.float32
        try:
            smicnet_model.build_smicnet()
        except MissingDependencyError as exc:
            assert "PyTorch" in str(exc), exc
            print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


# --- architecture -----------------------------------------------------------------------------------
def test_output_shape_and_probabilities(model, torch):
    x = torch.rand(5, 1, 81, 81)
    logits = model(x)
    assert tuple(logits.shape) == (5, 4)
    proba = model.predict_proba(x)
    assert tuple(proba.shape) == (5, 4)
    assert torch.allclose(proba.sum(dim=1), torch.ones(5), atol=1e-6)
    torch.testing.assert_close(proba, torch.softmax(logits, dim=1), rtol=0, atol=1e-6)


def _perturbed_model(torch, seed: int, zero_stem_weight: bool = True):
    """A model whose BatchNorm statistics and affine parameters are far from the defaults (so folding them
    matters), with stem pointwise weights of both signs and one exactly zero (the max/min choice matters)."""
    torch.manual_seed(seed)
    model = sm.build_smicnet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.2, 3.0)
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.3, 0.3)
            elif isinstance(module, torch.nn.Conv2d):
                module.bias.uniform_(-0.2, 0.2)
        w = model.stem.pointwise.weight
        w[::2] = -w[::2].abs()
        w[1::2] = w[1::2].abs()
        if zero_stem_weight:
            w[3] = 0.0
    return model


@pytest.mark.parametrize("pointwise_gemm", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_inference_equals_the_reference_forward(torch, seed, pointwise_gemm):
    """``predict_proba`` runs the rewritten graph (BN folded, pool before LeakyReLU, the stem's pool of max and
    min); it must give the reference ``forward``'s softmax to float rounding and the same class everywhere,
    on quantised patches (the real input) and on patches with plateaus (ties inside a 2x2 pooling window)."""
    model = _perturbed_model(torch, seed)
    gen = torch.Generator().manual_seed(seed)
    smooth = torch.rand(96, 1, 81, 81, generator=gen)
    quantised = torch.floor(smooth * 255) / 255
    plateaus = torch.floor(torch.rand(32, 1, 81, 81, generator=gen) * 3) / 3
    x = torch.cat([quantised, plateaus])
    with torch.no_grad():
        reference = torch.softmax(model.eval()(x), dim=1)
        fast = torch.softmax(model.inference_logits(x, pointwise_gemm=pointwise_gemm), dim=1)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    assert torch.equal(fast.argmax(dim=1), reference.argmax(dim=1))
    assert (reference.max(dim=1).values < 0.99).any(), "test design: the outputs must not all be saturated"


def test_stage_shapes_match_the_spec_table(model, torch):
    shapes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
             for m in (model.stem, *model.stages)]
    model(torch.rand(2, 1, 81, 81))
    for hook in hooks:
        hook.remove()
    assert shapes == [(16, 40, 40), (32, 20, 20), (64, 10, 10), (128, 5, 5), (256, 2, 2)]
    assert [s.shortcut.stride for s in model.stages] == [(2, 2), (2, 2), (2, 2), (3, 3)]
    assert all(s.shortcut.padding == (0, 0) for s in model.stages)


def test_parameter_count_matches_the_spec_table(model):
    table = spec_table_counts()
    assert table == {"stem": 46, "stage1": 1312, "stage2": 4672, "stage3": 17536, "stage4": 67840,
                     "dense": 98688, "dense_1": 1540}
    total = sum(table.values())
    assert total == 191_634 == sm.TOTAL_PARAMETERS
    bn_stats = 2 * (1 + 16 + 32 + 64 + 128)  # moving mean + variance: counted by Keras, buffers in torch
    assert total - bn_stats == 191_152 == sm.TRAINABLE_PARAMETERS
    assert sm.count_parameters(model) == (191_152, 191_634)

    def keras_count(module) -> int:
        return sum(p.numel() for p in module.parameters()) + sum(
            b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))

    ours = {"stem": keras_count(model.stem), **{f"stage{i + 1}": keras_count(s) for i, s in enumerate(model.stages)},
            "dense": keras_count(model.dense), "dense_1": keras_count(model.classifier)}
    assert ours == table


def test_batchnorm_and_dropout_settings(model, torch):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 5
    assert all(b.eps == 1e-3 and b.momentum == 0.01 for b in bns)
    assert model.dropout.p == 0.4
    depthwise = [model.stem.depthwise, *[s.block.depthwise for s in model.stages]]
    assert [d.groups for d in depthwise] == [1, 16, 32, 64, 128]
    assert all(d.padding == (1, 1) and d.bias is not None for d in depthwise)


def test_rejects_wrong_input_shapes(model, torch):
    for shape in ((1, 1, 80, 81), (1, 81, 81), (1, 3, 81, 81)):
        with pytest.raises(InvalidInputError, match=r"\(N, 1, 81, 81\)"):
            model(torch.zeros(shape))


def test_eval_mode_is_deterministic_and_batch_independent(model, torch):
    x = torch.rand(8, 1, 81, 81)
    a, b = model.predict_proba(x), model.predict_proba(x)
    assert torch.equal(a, b)
    singles = torch.cat([model.predict_proba(x[i:i + 1]) for i in range(8)])
    assert torch.allclose(a, singles, atol=1e-6)


def test_fast_forward_trains_exactly_like_forward(torch):
    """Training calls ``fast_forward``: in training mode (batch statistics, dropout) it must give forward's logits,
    the same gradient for every parameter and the same BatchNorm running statistics afterwards."""
    import copy

    # No exactly-zero stem weight here: that channel is a constant, and which voxel of its tied pooling window
    # "receives" the weight's gradient is arbitrary (forward takes the first, the rewrite the window's max).
    reference = _perturbed_model(torch, 2, zero_stem_weight=False).train()
    fast = copy.deepcopy(reference)
    gen = torch.Generator().manual_seed(5)
    x = torch.floor(torch.rand(24, 1, 81, 81, generator=gen) * 255) / 255
    labels = torch.randint(0, 4, (24,), generator=gen)
    outputs = []
    for run in (reference.forward, fast.fast_forward):
        torch.manual_seed(11)  # the same dropout mask for both
        logits = run(x)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        outputs.append(logits.detach())
    scale = float(outputs[0].abs().max())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-4 * scale)  # float rounding of the convs
    grads = dict(reference.named_parameters())
    for name, param in fast.named_parameters():
        assert param.grad is not None, name
        if name.endswith("depthwise.bias"):  # followed by BatchNorm: its true gradient is 0, both are noise
            assert float(param.grad.abs().max()) < 1e-4, name
            continue
        scale = float(grads[name].grad.abs().max())
        torch.testing.assert_close(param.grad, grads[name].grad, rtol=0, atol=1e-4 * scale, msg=name)
    buffers = dict(reference.named_buffers())
    for name, buffer in fast.named_buffers():
        torch.testing.assert_close(buffer, buffers[name], rtol=0, atol=1e-6, msg=name)


def test_folded_weights_follow_every_change_of_the_weights(torch):
    """Inference folds BatchNorm into the depthwise kernels once per state of the weights; an in-place update
    (an optimiser step, new running statistics) or loaded weights must be folded afresh, never served stale."""
    torch.manual_seed(3)
    net = sm.build_smicnet().eval()
    x = torch.rand(4, 1, 81, 81)
    with torch.inference_mode():
        before = net.inference_logits(x)
        again = net.inference_logits(x)
    torch.testing.assert_close(again, before, rtol=0, atol=0)
    with torch.no_grad():
        net.stages[1].block.bn.running_var.mul_(3.0)
        net.stem.depthwise.weight.add_(0.05)
    with torch.inference_mode():
        changed = net.inference_logits(x)
        reference = net(x)
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(changed, reference, rtol=1e-4, atol=1e-4)
    other = sm.build_smicnet().eval()
    net.load_state_dict(other.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(net.inference_logits(x), other(x), rtol=1e-4, atol=1e-4)
    net.to(torch.float64)  # a dtype (or device) move must refold too
    with torch.inference_mode():
        torch.testing.assert_close(net.inference_logits(x.double()), other.double()(x.double()), rtol=1e-9,
                                   atol=1e-9)
    net.float()
    with torch.enable_grad():  # training-style calls get a graph, and leave no graph-carrying cache behind
        net.inference_logits(x.requires_grad_(True)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_predict_proba_ignores_and_restores_training_mode(model, torch):
    x = torch.rand(4, 1, 81, 81)
    model.train()
    torch.manual_seed(1)
    first = model(x)
    second = model(x)
    assert not torch.equal(first, second)  # dropout is active in training (and BN uses batch statistics)
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), dim=1)
    model.train()
    once = model.predict_proba(x)
    torch.testing.assert_close(once, expected, rtol=0, atol=1e-6)  # moving statistics, no dropout
    assert torch.equal(model.predict_proba(x), once)  # and it did not update them
    assert model.training


def test_keras_style_initialisation(model, torch):
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            assert torch.count_nonzero(module.bias) == 0
            fan_in = module.weight[0].numel()
            fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
            assert module.weight.abs().max() <= (6.0 / (fan_in + fan_out)) ** 0.5
    torch.manual_seed(0)
    assert torch.equal(sm.build_smicnet().dense.weight, model.dense.weight)  # seeded builds are reproducible


def test_regularization_loss_is_the_dense_l1l2(model, torch):
    w = model.dense.weight.detach().double()
    expected = 1e-5 * w.abs().sum() + 1e-4 * (w * w).sum()
    assert torch.isclose(model.regularization_loss().double(), expected, rtol=1e-5)


def test_model_pickles_through_the_lazy_class(model, torch):
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone) is sm.SMICNet
    x = torch.rand(2, 1, 81, 81)
    assert torch.equal(clone.predict_proba(x), model.predict_proba(x))


# --- per-patch preprocessing --------------------------------------------------------------------------
def test_constant_patches_become_zeros():
    patches = np.stack([np.full((81, 81), v, np.float32) for v in (0.0, -1000.0, 3071.5, 1e-8)])
    out = pp.quantize_patches(patches)
    assert out.dtype == np.float32 and out.shape == patches.shape
    assert not out.any()


def test_quantisation_truncates_rather_than_rounds():
    patch = np.array([[0.0, 10.0, 2.5], [7.5, 9.99, 0.2]], np.float32)
    # 2.5/10*255 = 63.75 -> 63; 7.5/10*255 = 191.25 -> 191; 9.99/10*255 = 254.7... -> 254; 0.2 -> 5.1 -> 5
    expected = np.array([[0, 255, 63], [191, 254, 5]], np.float32) / np.float32(255)
    assert np.array_equal(pp.quantize_patches(patch), expected)


def test_quantisation_is_per_patch_min_max_with_negative_values():
    patches = np.array([[[-5.0, 5.0], [0.0, 5.0]], [[100.0, 300.0], [200.0, 100.0]]], np.float32)
    out = pp.quantize_patches(patches)
    levels = np.array([[[0, 255], [127, 255]], [[0, 255], [127, 0]]], np.float32)
    assert np.array_equal(out, levels / np.float32(255))
    assert np.array_equal(out[1], pp.quantize_patches(patches[1]))  # independent of the rest of the batch


def test_output_levels_and_input_untouched():
    rng = np.random.default_rng(3)
    patches = rng.normal(0, 500, (3, 2, 81, 81)).astype(np.float32)
    before = patches.copy()
    out = pp.quantize_patches(patches)
    assert np.array_equal(patches, before)
    levels = out * 255
    assert np.array_equal(levels, np.round(levels)) and levels.min() == 0 and levels.max() == 255
    loop = np.stack([[pp.quantize_patches(p) for p in row] for row in patches])
    assert np.array_equal(out, loop)


def test_numpy_and_torch_preprocessing_are_bit_identical(torch):
    rng = np.random.default_rng(7)
    cases = [rng.normal(300, 800, (64, 81, 81)).astype(np.float32),
             rng.integers(-1024, 3071, (16, 81, 81)).astype(np.int16),
             rng.random((16, 81, 81)) * 1e-3,  # float64 input is cast to float32 first, as Keras does
             np.full((2, 81, 81), 42.0, np.float32)]
    for raw in cases:
        ours = pp.quantize_patches(raw)
        on_torch = pp.quantize_patches_torch(torch.from_numpy(raw)).numpy()
        assert on_torch.dtype == np.float32
        assert np.array_equal(ours.view(np.uint32), on_torch.view(np.uint32))


def test_quantisation_rejects_non_finite_and_flat_input():
    with pytest.raises(ValueError, match="NaN"):
        pp.quantize_patches(np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="2 dimensions"):
        pp.quantize_patches(np.zeros(5, np.float32))


# --- volume-level metal zeroing ----------------------------------------------------------------------
def ct_volume(metal: bool) -> np.ndarray:
    rng = np.random.default_rng(11)
    vol = rng.normal(40, 30, (40, 50, 60)).astype(np.int16)  # soft tissue
    vol[:, :, :10] = -1000  # air
    vol[10:30, 10:40, 20:40] += 600  # bone
    if metal:
        vol[20:24, 20:24, 25:35] = 12000  # an electrode-like metal streak (160 voxels, > 0.1 %)
    return vol


def naive_reference(vol: np.ndarray) -> np.ndarray:
    """The authors' procedure written out directly with whole-volume numpy statistics."""
    out = vol.copy()
    p999, p95 = np.percentile(vol, 99.9), np.percentile(vol, 95)
    if p999 > 6 * p95:
        out[out >= vol.mean() + 4 * vol.std()] = 0
    return out


def test_metal_zeroing_triggers_and_matches_the_authors_rule(monkeypatch):
    vol = ct_volume(metal=True)
    monkeypatch.setattr(pp, "_STATS_CHUNK", 1000)  # exercise the chunked statistics
    stats = pp.metal_artifact_stats(vol)
    assert stats.triggered
    assert stats.mean == pytest.approx(vol.mean(), rel=1e-12)
    assert stats.std == pytest.approx(vol.std(), rel=1e-12)
    assert (stats.p95, stats.p999) == tuple(np.percentile(vol, [95, 99.9]))
    out = pp.zero_metal_artifacts(vol, stats)
    assert np.array_equal(out, naive_reference(vol))
    assert out.dtype == vol.dtype
    assert (out[20:24, 20:24, 25:35] == 0).all()
    assert (out[10:30, 10:40, 20:25] > 300).all()  # bone is kept
    assert np.array_equal(vol, ct_volume(metal=True))  # input untouched unless in_place


def test_metal_zeroing_leaves_a_volume_without_metal_alone():
    vol = ct_volume(metal=False)
    stats = pp.metal_artifact_stats(vol)
    assert not stats.triggered and stats.threshold is None
    assert np.array_equal(pp.zero_metal_artifacts(vol, stats), vol)
    assert np.array_equal(naive_reference(vol), vol)


def test_metal_zeroing_of_a_region_equals_the_region_of_the_zeroed_volume():
    vol = ct_volume(metal=True)
    stats = pp.metal_artifact_stats(vol)
    roi = (slice(15, 35), slice(5, 45), slice(18, 50))
    assert np.array_equal(pp.zero_metal_artifacts(vol[roi], stats), pp.zero_metal_artifacts(vol, stats)[roi])
    same = vol.copy()
    assert pp.zero_metal_artifacts(same, stats, in_place=True) is same
    assert np.array_equal(same, naive_reference(vol))


def test_metal_stats_reject_empty_and_non_finite_volumes():
    with pytest.raises(ValueError, match="empty"):
        pp.metal_artifact_stats(np.zeros((0, 3, 3)))
    vol = np.zeros((4, 4, 4), np.float32)
    vol[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pp.metal_artifact_stats(vol)
