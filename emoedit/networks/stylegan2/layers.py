"""StyleGAN2 building blocks in pure PyTorch (no custom CUDA ops).

Numerically these follow NVlabs stylegan2-ada-pytorch (``torch_utils/ops`` and
``training/networks.py``), written from its description:

- :func:`upfirdn2d` — upsample (zero insertion), pad/crop, FIR filter, downsample;
  separable filters run as weighted sums of shifted, strided views (elementwise ops, whose
  double backward — R1, path length — is cheap; a depthwise convolution's is evaluated
  one channel at a time by PyTorch on the CPU), 2-D filters as a depthwise convolution.
- :func:`bias_act` — bias, activation (``linear`` / ``lrelu`` 0.2 / ``relu``), gain, clamp.
- :func:`conv2d_resample` — a convolution fused with FIR up/downsampling (transposed
  convolution for ``up=2``, strided convolution for ``down=2``).
- :func:`modulated_conv2d` — style modulation, optional demodulation, either as one
  grouped convolution (``fused_modconv``) or by scaling activations around a shared one.
- :class:`EqualizedLinear`, :class:`EqualizedConv2d` — equalised learning rate: weights
  are stored as N(0, 1) (divided by the lr multiplier) and scaled at run time.

Filters are normalised to sum 1 (times ``gain``); the default resampling filter is the
binomial ``[1, 3, 3, 1]``. Filter taps are non-persistent buffers (not in state dicts);
every other parameter/buffer name mirrors stylegan2-ada-pytorch so a state dict exported
from there maps one to one.

Mixed precision: a layer runs in the dtype of its input activations. Blocks that run in
bfloat16 cast activations once; weights, styles, demodulation coefficients, noise and
biases are cast to the activation dtype right before use, like ``torch.autocast`` would
do for the convolutions, while styles and demodulation coefficients are computed in float32.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoedit.shape_checks import assert_shape

ACTIVATIONS = ("linear", "lrelu", "relu")
LRELU_SLOPE = 0.2  # negative slope of the leaky ReLU
DEFAULT_GAIN = {"linear": 1.0, "lrelu": math.sqrt(2.0), "relu": math.sqrt(2.0)}  # keeps unit variance
DEFAULT_FILTER = (1.0, 3.0, 3.0, 1.0)  # binomial low-pass filter for 2x resampling

Padding = int | Sequence[int]


# --------------------------------------------------------------------------- helpers


def setup_filter(taps: Sequence[float] | Tensor, *, normalize: bool = True) -> Tensor:
    """1-D FIR taps as a float32 tensor ``(K,)``, normalised so that the 2-D outer product sums to 1.

    A 1-D filter stands for the separable 2-D filter ``f ⊗ f`` everywhere in this module.
    """
    f = torch.as_tensor(taps, dtype=torch.float32).flatten()
    if f.numel() == 0 or not torch.isfinite(f).all():
        raise ValueError(f"setup_filter: taps must be finite and non-empty, got {taps!r}")
    if normalize:
        total = f.sum()
        if total == 0:
            raise ValueError("setup_filter: taps sum to 0; cannot normalise")
        f = f / total
    return f


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or (x, y), got {value!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair  # type: ignore[return-value]


def parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """``p`` → (p, p, p, p); ``(px, py)`` → (px, px, py, py); ``(x0, x1, y0, y1)`` unchanged."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    values = [int(p) for p in padding]
    if len(values) == 2:
        return values[0], values[0], values[1], values[1]
    if len(values) == 4:
        return values[0], values[1], values[2], values[3]
    raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1), got {padding!r}")


def _filter_size(f: Tensor | None) -> int:
    if f is None:
        return 1
    if f.ndim == 1:
        return int(f.shape[0])
    if f.ndim == 2 and f.shape[0] == f.shape[1]:
        return int(f.shape[0])
    raise ValueError(f"filter must be (K,) separable taps or a square (K, K) filter, got shape {tuple(f.shape)}")


# --------------------------------------------------------------------------- upfirdn2d


def upfirdn2d(
    x: Tensor,  # (B, C, H, W) activations
    f: Tensor | None,  # (K,) separable taps, (K, K) filter, or None (no filtering)
    *,
    up: int | Sequence[int] = 1,  # integer upsampling factor (x, y): zeros inserted between samples
    down: int | Sequence[int] = 1,  # integer downsampling factor (x, y): keep every down-th sample
    padding: Padding = 0,  # (x0, x1, y0, y1) padding (negative = crop) after upsampling
    gain: float = 1.0,  # overall gain of the filter (e.g. up**2 to keep the signal's magnitude)
    flip_filter: bool = False,  # False: true convolution with f; True: correlation
) -> Tensor:
    """Upsample, pad, FIR-filter and downsample a batch of images.

    Output size per axis: ``(in·up + pad0 + pad1 − K) // down + 1``. Pure PyTorch:
    zero insertion by reshaping, separable taps as sums of shifted strided views (one
    axis at a time), a 2-D filter as a strided depthwise convolution.
    """
    assert_shape(x, (None, None, None, None), "upfirdn2d x")
    up_x, up_y = _pair(up, "up")
    down_x, down_y = _pair(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    batch, channels, height, width = x.shape

    if up_x > 1 or up_y > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up_x - 1, 0, 0, 0, up_y - 1])
        x = x.reshape(batch, channels, height * up_y, width * up_x)

    if px0 > 0 or px1 > 0 or py0 > 0 or py1 > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if px0 < 0 or px1 < 0 or py0 < 0 or py1 < 0:
        x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]

    if f is None:
        if gain != 1.0:
            x = x * gain
        return x[:, :, ::down_y, ::down_x] if (down_x > 1 or down_y > 1) else x

    _filter_size(f)
    f = f.to(dtype=x.dtype, device=x.device)
    if not flip_filter:  # conv2d correlates; flip for a true convolution
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 1:
        # Separable taps: weighted sums of shifted (strided) views, one axis at a time.
        # Elementwise ops only: their double backward (R1, path length) stays cheap, unlike
        # a depthwise convolution's, which PyTorch evaluates one channel group at a time.
        taps = f * (gain**0.5)
        x = _fir_along(x, taps, dim=2, stride=down_y)
        return _fir_along(x, taps, dim=3, stride=down_x)
    size = f.shape[0]
    f2 = (f * gain).reshape(1, 1, size, size).expand(channels, 1, size, size)
    return F.conv2d(x, f2, stride=(down_y, down_x), groups=channels)


def _fir_along(x: Tensor, taps: Tensor, *, dim: int, stride: int) -> Tensor:
    """Correlate ``x`` with 1-D ``taps`` along ``dim`` (valid part), keeping every ``stride``-th output."""
    size = taps.shape[0]
    count = (x.shape[dim] - size) // stride + 1
    if count < 1:
        raise ValueError(f"upfirdn2d: {x.shape[dim]} samples (after padding) are fewer than the {size} filter taps")
    span = (count - 1) * stride + 1
    out: Tensor | None = None
    for k in range(size):
        view = x.narrow(dim, k, span)
        if stride > 1:
            view = view[:, :, ::stride] if dim == 2 else view[:, :, :, ::stride]
        term = view * taps[k]
        out = term if out is None else out + term
    assert out is not None
    return out


def upsample2d(x: Tensor, f: Tensor, *, up: int = 2, padding: Padding = 0, gain: float = 1.0) -> Tensor:
    """``(B, C, H, W)`` → ``(B, C, H·up, W·up)``: zero insertion + FIR low-pass (magnitude kept)."""
    size = _filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    pad = [px0 + (size + up - 1) // 2, px1 + (size - up) // 2, py0 + (size + up - 1) // 2, py1 + (size - up) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, gain=gain * up * up)


def downsample2d(x: Tensor, f: Tensor, *, down: int = 2, padding: Padding = 0, gain: float = 1.0) -> Tensor:
    """``(B, C, H, W)`` → ``(B, C, H/down, W/down)``: FIR low-pass + decimation."""
    size = _filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    pad = [px0 + (size - down + 1) // 2, px1 + (size - down) // 2, py0 + (size - down + 1) // 2, py1 + (size - down) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, gain=gain)


# --------------------------------------------------------------------------- bias_act


def bias_act(
    x: Tensor,  # activations, channels along ``dim``
    b: Tensor | None = None,  # (C,) bias added before the activation
    *,
    act: str = "linear",  # "linear", "lrelu" (slope 0.2) or "relu"
    gain: float | None = None,  # output scale; None = the activation's default (√2 for lrelu/relu)
    clamp: float | None = None,  # clamp the output to ±clamp; None = no clamping
    dim: int = 1,  # the channel axis of x
) -> Tensor:
    """``clamp(act(x + b) · gain)`` — the reference semantics of stylegan2's fused ``bias_act`` op."""
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: act must be one of {ACTIVATIONS}, got {act!r}")
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: bias of shape {tuple(b.shape)} does not fit x {tuple(x.shape)} on dim {dim}")
        shape = [-1 if i == dim else 1 for i in range(x.ndim)]
        x = x + b.to(x.dtype).reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif act == "relu":
        x = F.relu(x)
    gain = DEFAULT_GAIN[act] if gain is None else float(gain)
    if gain != 1.0:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``x / sqrt(mean(x², dim) + eps)`` — unit second moment along ``dim``."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# --------------------------------------------------------------------------- conv2d_resample


def _conv(x: Tensor, w: Tensor, *, stride: int = 1, padding: int | tuple[int, int] = 0, groups: int = 1,
          transpose: bool = False, flip_weight: bool = True) -> Tensor:
    if not flip_weight and (w.shape[-1] > 1 or w.shape[-2] > 1):
        w = w.flip([2, 3])
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: Tensor,  # (B, I·groups... ) = (B, C_in, H, W)
    w: Tensor,  # (C_out, C_in / groups, k, k) weights
    f: Tensor | None = None,  # FIR filter taps for resampling (needed when up or down > 1)
    *,
    up: int = 1,  # 1 or an integer upsampling factor
    down: int = 1,  # 1 or an integer downsampling factor
    padding: int = 0,  # padding with respect to the upsampled image
    groups: int = 1,  # convolution groups
    flip_weight: bool = True,  # True: correlation (like F.conv2d); False: true convolution
) -> Tensor:
    """2-D convolution with optional FIR upsampling before / downsampling after it.

    Equivalent to ``upfirdn2d(up, pad) → conv2d → upfirdn2d(down)`` (the generic path of
    stylegan2's ``conv2d_resample``), computed with fast paths: 1×1 kernels resample on
    the cheaper side, ``down`` uses a strided convolution, ``up`` a transposed convolution.
    ``up`` and ``down`` together are not supported (StyleGAN2 never uses them together).
    """
    assert_shape(x, (None, None, None, None), "conv2d_resample x")
    assert_shape(w, (None, None, None, None), "conv2d_resample w")
    if up < 1 or down < 1 or (up > 1 and down > 1):
        raise ValueError(f"conv2d_resample: need up >= 1, down >= 1 and not both > 1; got up={up}, down={down}")
    if (up > 1 or down > 1) and f is None:
        raise ValueError("conv2d_resample: resampling needs a filter f")
    out_channels, in_per_group, kh, kw = w.shape
    if kh != kw:
        raise ValueError(f"conv2d_resample: square kernels only, got {kh}x{kw}")
    fsize = _filter_size(f)
    p0 = p1 = padding
    if up > 1:
        p0 += (fsize + up - 1) // 2
        p1 += (fsize - up) // 2
    if down > 1:
        p0 += (fsize - down + 1) // 2
        p1 += (fsize - down) // 2

    if up == 1 and down == 1:
        if p0 == p1 and p0 >= 0:
            return _conv(x, w, padding=p0, groups=groups, flip_weight=flip_weight)
        x = upfirdn2d(x, None, padding=[p0, p1, p0, p1])
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    if down > 1:
        if kw == 1:  # 1x1: downsample first (fewer pixels to convolve)
            x = upfirdn2d(x, f, down=down, padding=[p0, p1, p0, p1])
            return _conv(x, w, groups=groups, flip_weight=flip_weight)
        x = upfirdn2d(x, f, padding=[p0, p1, p0, p1])
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # up > 1
    if kw == 1:  # 1x1: convolve first, then upsample
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[p0, p1, p0, p1], gain=up * up)
    # Transposed convolution = zero insertion + convolution; then the FIR filter.
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    q0 = p0 - (kw - 1)
    q1 = p1 - (kw - up)
    pt = max(min(-q0, -q1), 0)
    x = _conv(x, wt, stride=up, padding=pt, groups=groups, transpose=True, flip_weight=not flip_weight)
    return upfirdn2d(x, f, padding=[q0 + pt, q1 + pt, q0 + pt, q1 + pt], gain=up * up)


# --------------------------------------------------------------------------- modulated conv


def modulated_conv2d(
    x: Tensor,  # (B, I, H, W) activations
    weight: Tensor,  # (O, I, k, k) shared weights
    styles: Tensor,  # (B, I) per-sample modulation (float32)
    *,
    noise: Tensor | None = None,  # broadcastable to (B, O, H', W'); added after (de)modulation
    up: int = 1,  # upsampling factor (FIR, see conv2d_resample)
    down: int = 1,  # downsampling factor
    padding: int = 0,  # padding with respect to the upsampled image
    resample_filter: Tensor | None = None,  # FIR taps for up/down
    demodulate: bool = True,  # normalise each output channel's per-sample weights to unit L2 norm
    flip_weight: bool = True,  # True: correlation; False: true convolution
    fused_modconv: bool = True,  # True: one grouped conv with per-sample weights; False: scale activations
) -> Tensor:
    """StyleGAN2 weight (de)modulation: ``w'_oi = w_oi · s_i``, ``w''_oi = w'_oi / sqrt(Σ_i,k w'² + 1e-8)``.

    Returns ``(B, O, H', W')`` in the dtype of ``x``. Both execution modes give the same
    result (up to rounding); the grouped one is the textbook formulation, the other
    (scale input by ``s``, shared convolution, scale output by the demodulation
    coefficients) is usually faster for training.
    """
    dims = assert_shape(x, ("B", "I", None, None), "modulated_conv2d x")
    assert_shape(weight, (None, "I", None, None), "modulated_conv2d weight", dims)
    assert_shape(styles, ("B", "I"), "modulated_conv2d styles", dims)
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    styles = styles.float()
    weight32 = weight.float()

    w: Tensor | None = None
    dcoefs: Tensor | None = None
    if demodulate or fused_modconv:
        w = weight32.unsqueeze(0) * styles.reshape(batch, 1, in_channels, 1, 1)  # (B, O, I, k, k)
    if demodulate:
        assert w is not None
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # (B, O)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, in_channels, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate:
            assert dcoefs is not None
            x = x * dcoefs.to(x.dtype).reshape(batch, out_channels, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    assert w is not None
    if demodulate:
        assert dcoefs is not None
        w = w * dcoefs.reshape(batch, out_channels, 1, 1, 1)
    memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
        else torch.contiguous_format
    x = x.reshape(1, batch * in_channels, *x.shape[2:])
    w = w.reshape(batch * out_channels, in_channels, kh, kw).to(x.dtype)
    if memory_format == torch.channels_last:
        x = x.contiguous(memory_format=memory_format)
        w = w.contiguous(memory_format=memory_format)
    x = conv2d_resample(x, w, resample_filter, up=up, down=down, padding=padding, groups=batch,
                        flip_weight=flip_weight)
    x = x.reshape(batch, out_channels, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# --------------------------------------------------------------------------- equalised-lr layers


class EqualizedLinear(nn.Module):
    """Fully connected layer with equalised learning rate (``FullyConnectedLayer`` in stylegan2).

    Stored weight ~ N(0, 1/lr_multiplier²); used weight = stored · lr_multiplier / sqrt(in);
    used bias = stored · lr_multiplier (so ``lr_multiplier`` scales the effective learning rate).
    """

    def __init__(
        self,
        *,
        in_features: int,  # input width
        out_features: int,  # output width
        bias: bool = True,  # add a bias before the activation
        activation: str = "linear",  # "linear", "lrelu" or "relu" (with its default gain)
        lr_multiplier: float = 1.0,  # learning-rate multiplier (0.01 in the mapping network)
        bias_init: float = 0.0,  # initial value of the (used) bias
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"EqualizedLinear: activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_features)`` → ``(B, out_features)`` in the dtype of ``x``."""
        assert_shape(x, (None, self.in_features), "EqualizedLinear input")
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class EqualizedConv2d(nn.Module):
    """2-D convolution with equalised learning rate and FIR resampling (``Conv2dLayer`` in stylegan2)."""

    def __init__(
        self,
        *,
        in_channels: int,  # input channels
        out_channels: int,  # output channels
        kernel_size: int,  # square kernel side (odd); padding keeps the size ("same")
        bias: bool = True,  # add a bias before the activation
        activation: str = "linear",  # "linear", "lrelu" or "relu"
        up: int = 1,  # FIR upsampling factor before the convolution
        down: int = 1,  # FIR downsampling factor after the convolution
        resample_filter: Sequence[float] = DEFAULT_FILTER,  # FIR taps for resampling
        conv_clamp: float | None = None,  # clamp the output to ±conv_clamp (None: off)
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"EqualizedConv2d: activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = DEFAULT_GAIN[activation]
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        """``(B, in, H, W)`` → ``(B, out, H·up/down, W·up/down)`` in the dtype of ``x``."""
        assert_shape(x, (None, self.in_channels, None, None), "EqualizedConv2d input")
        w = (self.weight * self.weight_gain).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
            w = w.contiguous(memory_format=torch.channels_last)
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=self.up == 1)
        act_gain = self.act_gain * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=act_gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")
