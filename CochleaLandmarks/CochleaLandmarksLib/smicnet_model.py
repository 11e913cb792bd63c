"""SMICNet, the 81x81 patch classifier of Wang et al. (ICBRA 2023), rebuilt layer for layer in PyTorch.

Why a faithful rebuild rather than "a similar CNN": the published Keras weights only reproduce the
published behaviour when every layer, its order, padding, epsilon and activation slope are the same
(seed-methods.md section 1.4). The parity test against Keras outputs holds this file to that.

Architecture (NCHW input ``(N, 1, 81, 81)``; H = patch rows = volume axis j, W = columns = axis k;
never transpose them, the 3x3 kernels are not symmetric)::

    stem:  depthwise 3x3 'same' (+bias) -> BN -> LeakyReLU(0.3) -> 1x1 conv 1->16 -> LeakyReLU
           -> maxpool 2x2/2 (floor)                                              = res0 16x40x40
    stage s = 1..4, F = 32, 64, 128, 256 (input res, Cin channels):
           y = maxpool(LReLU(conv1x1_F(LReLU(BN(depthwise3x3(res))))))           floor(H/2)
           res = y + conv1x1_F(res, stride 2; stride 3 for F = 256)               ceil(H/s)
           shapes: 32x20x20 -> 64x10x10 -> 128x5x5 -> 256x2x2
    head:  global average pool -> dense 256->384 (linear) -> LeakyReLU(0.3) -> dropout 0.4
           -> dense 384->4 -> softmax (apex/Helicotrema, basal/Modiolus base, Round Window, background)

Keras ``same`` padding of a 1x1 convolution is always zero padding (TF pads
``max((ceil(n/s) - 1) * s + 1 - n, 0) = 0``), and the output has ``ceil(n/s)`` rows, which is what
``Conv2d(kernel_size=1, stride=s, padding=0)`` gives for any n. Depthwise 3x3 ``same`` at stride 1 is
symmetric padding 1. BatchNorm: epsilon 1e-3, Keras momentum 0.99 = torch momentum 0.01.

``forward`` returns logits (training uses them with a cross-entropy loss, which is numerically safer
than log of a softmax); :meth:`SMICNet.predict_proba` returns the softmax that Keras' last layer gives.

torch is imported lazily: the ``SMICNet`` class is built by :func:`smicnet_class` the first time it
is needed (and is reachable as ``smicnet_model.SMICNet`` through a module ``__getattr__``, so pickling
works), so ``import CochleaLandmarksLib.smicnet_model`` works on a machine without PyTorch.
"""

from __future__ import annotations

import functools
from typing import Any

from CochleaCommonLib.devices import require_torch
from CochleaCommonLib.errors import InvalidInputError

#: Name and version of the architecture as written into our weight files; bump on any change.
ARCHITECTURE = "smicnet"
ARCHITECTURE_VERSION = 1

#: The four output classes, in the network's output order (landmark names as in DESIGN.md).
CLASS_NAMES = ("Helicotrema", "Modiolus base", "Round Window", "background")
BACKGROUND_CLASS = 3

#: Patch side in voxels (81 px x 0.3 mm = 24.3 mm field of view) and the voxel size it was trained for.
PATCH_SIZE = 81
SPACING_MM = 0.3

STEM_FILTERS = 16
STAGE_FILTERS = (32, 64, 128, 256)
SHORTCUT_STRIDES = (2, 2, 2, 3)
DENSE_UNITS = 384
NUM_CLASSES = 4

#: Keras defaults the authors kept: LeakyReLU alpha, BatchNorm epsilon/momentum (torch convention), dropout.
LEAKY_SLOPE = 0.3
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
DROPOUT = 0.4
#: The L1L2 kernel regulariser of the 384-unit dense layer (training only).
DENSE_L1 = 1e-5
DENSE_L2 = 1e-4

#: Trainable parameters (torch ``parameters()``) and the Keras total that also counts BN moving statistics.
TRAINABLE_PARAMETERS = 191_152
TOTAL_PARAMETERS = 191_634


@functools.cache
def smicnet_class() -> type:
    """Build (once) and return the ``SMICNet`` ``torch.nn.Module`` class.

    Raises :class:`MissingDependencyError` (saying how to install PyTorch) when torch is missing.
    """
    torch = require_torch()
    nn = torch.nn
    F = torch.nn.functional

    def _check_patches(x: Any) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, PATCH_SIZE, PATCH_SIZE):
            raise InvalidInputError(
                f"SMICNet takes patches shaped (N, 1, {PATCH_SIZE}, {PATCH_SIZE}) (NCHW, H = rows = j, "
                f"W = columns = k); got {tuple(x.shape)}.")

    def _max_pool_2x2(x: Any) -> Any:
        """``max_pool2d(x, 2, 2)`` (floor mode) as two pairwise maxima of strided views: the same values, and
        5-10x faster than the pooling kernel on the CPU for the small-channel tensors of this network."""
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])

    def _pointwise(x: Any, conv: Any, stride: int = 1, as_gemm: bool = False) -> Any:
        """A 1x1 convolution (``conv``'s weights, any stride). ``as_gemm``: one matrix product with the bias
        added inside it (cuBLASLt's bias epilogue on a GPU), on channels-last rows; this saves the separate
        bias pass a cuDNN convolution makes, which on a GPU cost a quarter of the network's time."""
        if not as_gemm:
            return F.conv2d(x, conv.weight, conv.bias, stride=stride)
        if stride > 1:
            x = x[..., ::stride, ::stride]
        n, c, h, w = x.shape
        out = conv.weight.shape[0]
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
        y = torch.addmm(conv.bias, rows, conv.weight.reshape(out, c).t())
        return y.reshape(n, h, w, out).permute(0, 3, 1, 2)

    def _max_pool2d(x: Any) -> Any:
        return F.max_pool2d(x, 2, 2)

    def _folded_depthwise(block: Any) -> tuple[Any, Any]:
        """The block's depthwise kernel and bias with its BatchNorm (moving statistics) folded in."""
        bn = block.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = block.depthwise.weight * scale[:, None, None, None]
        bias = (block.depthwise.bias - bn.running_mean) * scale + bn.bias
        return weight, bias

    class SeparableBlock(nn.Module):
        """Depthwise 3x3 'same' (+bias), BN, LeakyReLU, 1x1 conv, LeakyReLU, 2x2 max-pool (stem and stages)."""

        def __init__(self, in_channels: int, out_channels: int) -> None:
            super().__init__()
            self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=True)
            self.bn = nn.BatchNorm2d(in_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
            self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)

        def forward(self, x: Any) -> Any:
            x = F.leaky_relu(self.bn(self.depthwise(x)), LEAKY_SLOPE)
            return F.max_pool2d(F.leaky_relu(self.pointwise(x), LEAKY_SLOPE), 2, 2)

    class ResidualStage(nn.Module):
        """One stage: separable block + 2x2 max-pool, plus a strided 1x1 shortcut from the stage input."""

        def __init__(self, in_channels: int, out_channels: int, shortcut_stride: int) -> None:
            super().__init__()
            self.block = SeparableBlock(in_channels, out_channels)
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=shortcut_stride, padding=0, bias=True)

        def forward(self, res: Any) -> Any:
            return self.block(res) + self.shortcut(res)

    class SMICNet(nn.Module):
        """The SMICNet patch classifier; see the module docstring for the exact layer list."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = SeparableBlock(1, STEM_FILTERS)
            stages, cin = [], STEM_FILTERS
            for filters, stride in zip(STAGE_FILTERS, SHORTCUT_STRIDES):
                stages.append(ResidualStage(cin, filters, stride))
                cin = filters
            self.stages = nn.ModuleList(stages)
            self.dense = nn.Linear(cin, DENSE_UNITS)
            self.dropout = nn.Dropout(DROPOUT)
            self.classifier = nn.Linear(DENSE_UNITS, NUM_CLASSES)
            #: Where the weights came from (filled by the loaders; shown in reports).
            self.metadata: dict[str, Any] = {}
            self.reset_parameters()

        def reset_parameters(self) -> None:
            """Keras' initialisation: Glorot-uniform kernels, zero biases, BN gamma 1 / beta 0 / stats 0 and 1.

            Glorot's limit is symmetric in fan-in and fan-out, so torch's ``xavier_uniform_`` on the
            (out, in/groups, kh, kw) layout gives the same distribution as Keras on (kh, kw, in, out),
            depthwise kernels included.
            """
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.BatchNorm2d):
                    module.reset_parameters()

        def forward(self, x: Any) -> Any:
            """Logits ``(N, 4)`` for patches ``(N, 1, 81, 81)`` already preprocessed (see smicnet_preprocess)."""
            _check_patches(x)
            res = self.stem(x)
            for stage in self.stages:
                res = stage(res)
            return self._head(res)

        def _head(self, res: Any) -> Any:
            """Global average pool, dense 384 + LeakyReLU, dropout (as the module's mode says), dense 4."""
            hidden = self.dropout(F.leaky_relu(self.dense(res.mean(dim=(2, 3))), LEAKY_SLOPE))
            return self.classifier(hidden)

        def inference_logits(self, x: Any, *, pointwise_gemm: bool | None = None) -> Any:
            """The logits of :meth:`forward` in eval mode, computed with exact rewrites that remove most of the
            memory traffic (the sweep scores tens of thousands of patches per click).

            1. BatchNorm (moving statistics) folded into the depthwise kernel and bias before it.
            2. ``maxpool(lrelu(y)) == lrelu(maxpool(y))``: LeakyReLU is increasing, so it commutes with the
               max; it then runs on a quarter of the values.
            3. The stem's 1x1 convolution has one input channel: output channel c is ``w_c * a + b_c``, increasing
               in ``a`` when ``w_c >= 0`` and decreasing otherwise. The 2x2 max of channel c is therefore
               ``w_c * max(a) + b_c`` or ``w_c * min(a) + b_c``: two single-channel pools of ``a`` replace
               the 16-channel 81x81 tensor, the largest of the network. Floating-point rounding is monotone
               too, so this holds for the computed values, not only in exact arithmetic.

            The result equals ``forward`` up to float rounding of the folded BatchNorm (tested to 1e-5 in the
            softmax, with the identical class everywhere); ``forward`` stays the reference.
            ``pointwise_gemm`` (default: on CUDA) runs the 1x1 convolutions as matrix products (:func:`_pointwise`).
            """
            as_gemm = x.is_cuda if pointwise_gemm is None else bool(pointwise_gemm)
            return self._rewritten_logits(x, fold_bn=True, as_gemm=as_gemm, pool=_max_pool_2x2)

        def fast_forward(self, x: Any) -> Any:
            """:meth:`forward` through rewrites 2 and 3 of :meth:`inference_logits`, in any mode: what training
            calls. BatchNorm runs as the module it is (batch statistics and running-average updates in training
            mode) and dropout as its mode says, so values, gradients and BatchNorm statistics are those of
            ``forward`` (tested), at about half the time of a CPU training step. Pooling uses ``max_pool2d``
            here: its gradient goes to one maximum of a tied window, as in ``forward`` and Keras, where the
            pairwise maxima of inference would split it."""
            return self._rewritten_logits(x, fold_bn=False, as_gemm=False, pool=_max_pool2d)

        def _folded(self) -> list[tuple[Any, Any]]:
            """The folded depthwise kernels and biases of the stem and every stage (:func:`_folded_depthwise`),
            computed once per state of the weights: a sweep calls the network hundreds of times, and folding
            per call cost about 5 % of it. The key is the identity and in-place version counter of every tensor
            folded, so training steps, ``load_state_dict`` and device moves all refold."""
            blocks = (self.stem, *(stage.block for stage in self.stages))
            tensors = [t for b in blocks for t in (b.depthwise.weight, b.depthwise.bias, b.bn.weight, b.bn.bias,
                                                   b.bn.running_mean, b.bn.running_var)]
            key = tuple((id(t), t._version) for t in tensors)
            cached = getattr(self, "_folded_cache", None)
            if cached is None or cached[0] != key or torch.is_grad_enabled():
                folded = [_folded_depthwise(b) for b in blocks]
                if torch.is_grad_enabled():  # a graph-carrying result must not outlive its step
                    return folded
                cached = (key, folded)
                object.__setattr__(self, "_folded_cache", cached)  # not a module attribute: no state_dict entry
            return cached[1]

        def _rewritten_logits(self, x: Any, *, fold_bn: bool, as_gemm: bool, pool: Any) -> Any:
            _check_patches(x)
            stem = self.stem
            folded = self._folded() if fold_bn else None
            w_dw, b_dw = folded[0] if fold_bn else (stem.depthwise.weight, stem.depthwise.bias)
            # The stem's depthwise 3x3 sees one channel: run it as one grouped convolution with the batch as
            # channels, which the depthwise kernels handle 30x faster on the CPU than a 1-channel batch.
            n = x.shape[0]
            a = F.conv2d(x.reshape(1, n, PATCH_SIZE, PATCH_SIZE), w_dw.expand(n, 1, 3, 3), b_dw.expand(n),
                         padding=1, groups=n).reshape(n, 1, PATCH_SIZE, PATCH_SIZE)
            if not fold_bn:
                a = stem.bn(a)
            a = F.leaky_relu(a, LEAKY_SLOPE).reshape(n, PATCH_SIZE, PATCH_SIZE, 1)
            # Pooled through a transposed view: with max_pool2d (training) a tied window then hands its gradient
            # to the voxel the reference forward picks on the CPU (a plain NCHW pool picks another one; the
            # values are the same either way). test_fast_forward_trains_exactly_like_forward holds this.
            high = pool(a.transpose(1, 3)).transpose(1, 3)  # (n, 40, 40, 1)
            low = -pool((-a).transpose(1, 3)).transpose(1, 3)
            # Channel c of the stem's 1x1 convolution reads the max where w_c >= 0, else the min; the products
            # are formed channels-last (n, 40, 40, 16), the layout the following convolutions run fastest in.
            w_pw = stem.pointwise.weight.reshape(-1)
            zero = torch.zeros_like(w_pw)
            res = torch.addcmul(stem.pointwise.bias, high, torch.where(w_pw >= 0, w_pw, zero))
            res = res.addcmul_(low, torch.where(w_pw >= 0, zero, w_pw))
            res = F.leaky_relu_(res, LEAKY_SLOPE).permute(0, 3, 1, 2)
            for n_stage, stage in enumerate(self.stages, start=1):
                block = stage.block
                if fold_bn:
                    w_dw, b_dw = folded[n_stage]
                    t = F.conv2d(res, w_dw, b_dw, padding=1, groups=res.shape[1])
                else:
                    t = block.bn(block.depthwise(res))
                t = F.leaky_relu_(t, LEAKY_SLOPE)
                t = F.leaky_relu_(pool(_pointwise(t, block.pointwise, as_gemm=as_gemm)), LEAKY_SLOPE)
                res = _pointwise(res, stage.shortcut, stage.shortcut.stride[0], as_gemm=as_gemm).add_(t)
            return self._head(res)

        def predict_proba(self, x: Any) -> Any:
            """Class probabilities (softmax of the logits) in inference mode, as Keras ``predict`` gives them.

            BatchNorm uses its moving statistics and dropout is off whatever mode the model is in
            (the mode is restored afterwards); no autograd graph is built. Computed by
            :meth:`inference_logits` (the same function as ``forward``, rewritten for speed).
            """
            was_training = self.training
            if was_training:  # switching modes walks every submodule; the sweep calls this per batch in eval mode
                self.eval()
            try:
                with torch.inference_mode():
                    return torch.softmax(self.inference_logits(x), dim=1)
            finally:
                if was_training:
                    self.train(True)

        def regularization_loss(self) -> Any:
            """The authors' L1L2 penalty on the 384-unit dense kernel, to add to the training loss."""
            w = self.dense.weight
            return DENSE_L1 * w.abs().sum() + DENSE_L2 * w.square().sum()

    SMICNet.__module__ = __name__
    SMICNet.__qualname__ = "SMICNet"
    for helper in (SeparableBlock, ResidualStage):
        helper.__module__ = __name__
        helper.__qualname__ = helper.__name__
    globals().update(SMICNet=SMICNet, SeparableBlock=SeparableBlock, ResidualStage=ResidualStage)
    return SMICNet


def build_smicnet(device: str | Any | None = None, *, train: bool = False) -> Any:
    """A freshly initialised SMICNet (Keras-style init), in eval mode unless ``train``, on ``device``."""
    model = smicnet_class()()
    if device is not None:
        model = model.to(device)
    return model.train(train)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable parameters, total including BatchNorm running mean/variance as Keras counts them)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable, trainable + stats


def __getattr__(name: str) -> Any:
    """Build the torch classes on first access (``from smicnet_model import SMICNet``; unpickling)."""
    if name in ("SMICNet", "SeparableBlock", "ResidualStage"):
        smicnet_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
