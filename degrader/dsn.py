"""Deep Symmetric Network (DSN), used here as the degrading model.

The paper (Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked
Style Modeling", IEEE TCSVT 2023, Sec. IV-A) makes pseudo original photos for
Flickr by training DSN (Zhao et al., "Deep Symmetric Network for Underexposed
Image Enhancement with Recurrent Attentional Learning", ICCV 2021) the other way
round: from rule-based enhancer outputs back to the MIT-Adobe FiveK originals.

The network is

    x --E--> 64 channels --8 affine coupling blocks--> --E^T--> y

where ``E`` is a fixed linear encoder (two 3x3 convolutions 3->64->64 without
bias or activation) and ``E^T`` its adjoint (the same filters, transposed).
The forward direction (``rev=False``) degrades an enhanced photo; the reverse
direction (``rev=True``) runs ``E``, the coupling blocks inverted, then ``E^T``,
and enhances. Only the coupling part is exactly invertible; ``E^T`` is not
``E^-1``, so the two directions are tied together by training both losses.
Every operation has stride 1, so any image size works at full resolution.

Module and attribute names follow the reference implementation (an IRN
derivative) so that its checkpoints load with ``strict=True``: the encoder
filters are called ``haar_weights1``/``haar_weights2`` although nothing is
Haar, the channel attention is ``so``/``conv_du`` and every subnet carries an
unused attention module ``soca``.

References
----------
.. [1] L. Zhao, S.-P. Lu, T. Chen, Z. Yang, A. Shamir, "Deep Symmetric Network
       for Underexposed Image Enhancement with Recurrent Attentional Learning",
       ICCV 2021. Code: github.com/lin-zhao-resoLve/Deep-Symmetric-Network-Enhancement
.. [2] S. Kosugi, T. Yamasaki, "Personalized Image Enhancement Featuring Masked
       Style Modeling", IEEE TCSVT 2023.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from manifests.files import load_error_reason

KERNEL_SIZE = 3  # every convolution of DSN is 3x3, stride 1, padding 1 (the attention's 1x1 aside)
DEFAULT_ENCODER_SEED = 0


@dataclass(frozen=True)
class DSNConfig:
    """Every size of the network.

    Attributes
    ----------
    image_channels : int
        Channels of the RGB image (3).
    feature_channels : int
        Channels of the encoder output that the coupling blocks work on (64).
    split_channels : int
        Channels of the first half in each coupling block (32); the second half
        has ``feature_channels - split_channels``.
    coupling_blocks : int
        Number of affine coupling blocks (8).
    subnet_channels : int
        Width of the subnets F, G and H (64).
    subnet_residual_blocks : int
        Residual blocks per subnet, joined by dense additive skips (3).
    residual_expansion : int
        A residual block widens ``subnet_channels`` by this factor inside (2).
    attention_reduction : int
        Squeeze-and-excitation reduction ratio (16: 64 -> 4 -> 64).
    scale_clamp : float
        Bound of the coupling's log-scale, ``clamp * (2 sigmoid(.) - 1)`` (1.0).
    prelu_init : float
        Initial slope of every single-parameter PReLU (0.2).
    init_gain : float
        Factor on the initial weights of the subnet convolutions (0.1).
    """

    image_channels: int = 3
    feature_channels: int = 64
    split_channels: int = 32
    coupling_blocks: int = 8
    subnet_channels: int = 64
    subnet_residual_blocks: int = 3
    residual_expansion: int = 2
    attention_reduction: int = 16
    scale_clamp: float = 1.0
    prelu_init: float = 0.2
    init_gain: float = 0.1

    def __post_init__(self):
        positive = ("image_channels", "feature_channels", "split_channels", "coupling_blocks",
                    "subnet_channels", "subnet_residual_blocks", "residual_expansion",
                    "attention_reduction")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"DSNConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.split_channels >= self.feature_channels:
            raise ValueError("DSNConfig.split_channels must be smaller than feature_channels")
        if self.subnet_channels % self.attention_reduction:
            raise ValueError("DSNConfig.attention_reduction must divide subnet_channels")

    @classmethod
    def paper(cls) -> "DSNConfig":
        """The configuration of DSN's FiveK model (ResAT2Net_skip, block_num [8])."""
        return cls()

    @classmethod
    def small(cls) -> "DSNConfig":
        """The paper's structure at CPU size: 32 feature channels, 4 blocks,
        16-wide subnets (396,384 weights, 3.5% of the paper's compute)."""
        return cls(feature_channels=32, split_channels=16, coupling_blocks=4, subnet_channels=16,
                   attention_reduction=4)

    @classmethod
    def tiny(cls) -> "DSNConfig":
        """A minimal network for unit tests: 2 blocks, 8-wide subnets with two
        residual blocks each (42,696 weights)."""
        return cls(feature_channels=32, split_channels=16, coupling_blocks=2, subnet_channels=8,
                   subnet_residual_blocks=2, attention_reduction=4)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DSNConfig":
        return cls(**values)


# ---------------------------------------------------------------- building blocks


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (first-order, despite the
    reference's name "SOCA"): global average pool, 1x1 conv down by
    ``reduction``, PReLU, 1x1 conv up, sigmoid, multiply."""

    def __init__(self, channels: int, reduction: int, prelu_init: float):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.PReLU(num_parameters=1, init=prelu_init),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class ResidualBlock(nn.Module):
    """``x + attention(conv(prelu(conv(x))))``: channels -> expansion*channels -> channels."""

    def __init__(self, channels: int, config: DSNConfig):
        super().__init__()
        wide = channels * config.residual_expansion
        self.conv1 = nn.Conv2d(channels, wide, KERNEL_SIZE, padding=1)
        self.conv2 = nn.Conv2d(wide, channels, KERNEL_SIZE, padding=1)
        self.prelu = nn.PReLU(num_parameters=1, init=config.prelu_init)
        self.so = ChannelAttention(channels, config.attention_reduction, config.prelu_init)
        for conv in (self.conv1, self.conv2, self.so.conv_du[0], self.so.conv_du[2]):
            _init_conv(conv, nn.init.kaiming_normal_, config.init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.so(self.conv2(self.prelu(self.conv1(x))))


class Subnet(nn.Module):
    """The recurrent residual attention module used for F, G and H.

    ``h1 = prelu(conv1(x))``, then residual block k sees the sum of all earlier
    outputs (``h2 = R1(h1)``, ``h3 = R2(h1 + h2)``, ``h4 = R3(h1 + h2 + h3)``),
    and ``conv2`` maps the last one to ``out_channels``. ``conv2`` starts at zero,
    so a fresh coupling block is the identity.

    ``soca`` is never called; it exists because the reference implementation
    defines it, so its checkpoints load strictly (it holds 581 of the
    482,232 weights per subnet at the paper size and receives no gradient).
    """

    def __init__(self, in_channels: int, out_channels: int, config: DSNConfig):
        super().__init__()
        width = config.subnet_channels
        self.conv1 = nn.Conv2d(in_channels, width, KERNEL_SIZE, padding=1)
        self.residual_names = tuple(f"res{k + 1}" for k in range(config.subnet_residual_blocks))
        for name in self.residual_names:
            self.add_module(name, ResidualBlock(width, config))
        self.conv2 = nn.Conv2d(width, out_channels, KERNEL_SIZE, padding=1)
        self.prelu = nn.PReLU(num_parameters=1, init=config.prelu_init)
        self.soca = ChannelAttention(width, config.attention_reduction, config.prelu_init)
        _init_conv(self.conv1, nn.init.xavier_normal_, config.init_gain)
        _init_conv(self.conv2, nn.init.zeros_, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.prelu(self.conv1(x))
        skip_sum = hidden
        for name in self.residual_names:
            hidden = getattr(self, name)(skip_sum)
            skip_sum = skip_sum + hidden
        return self.conv2(hidden)


class AffineCoupling(nn.Module):
    """Invertible affine coupling block (reference ``InvBlockExp``).

    With ``x = (x1, x2)`` split along channels:

    forward:  ``y1 = x1 + F(x2)``; ``s = clamp (2 sigmoid(H(y1)) - 1)``;
              ``y2 = x2 exp(s) + G(y1)``
    inverse:  ``x2 = (y2 - G(y1)) / exp(s)`` with ``s`` from ``H(y1)``;
              ``x1 = y1 - F(x2)``

    ``s`` lies in ``(-clamp, clamp)``, so the scale ``exp(s)`` never vanishes.
    """

    def __init__(self, config: DSNConfig):
        super().__init__()
        self.split = config.split_channels
        rest = config.feature_channels - config.split_channels
        self.clamp = config.scale_clamp
        self.F = Subnet(rest, self.split, config)
        self.G = Subnet(self.split, rest, config)
        self.H = Subnet(self.split, rest, config)

    def log_scale(self, y1: torch.Tensor) -> torch.Tensor:
        return self.clamp * (torch.sigmoid(self.H(y1)) * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, :self.split], x[:, self.split:]
        y1 = x1 + self.F(x2)
        y2 = x2 * torch.exp(self.log_scale(y1)) + self.G(y1)
        return torch.cat((y1, y2), dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[:, :self.split], y[:, self.split:]
        x2 = (y2 - self.G(y1)) / torch.exp(self.log_scale(y1))
        x1 = y1 - self.F(x2)
        return torch.cat((x1, x2), dim=1)


class LinearEncoder(nn.Module):
    """Fixed linear encoder ``E`` (3x3 conv 3->C, then 3x3 conv C->C, no bias,
    no activation) and its adjoint ``E^T`` (the transposed convolutions in
    reverse order).

    The filters are buffers (never trained) so they travel in the state dict
    under the reference names ``haar_weights1`` (C x 3 x 3 x 3) and
    ``haar_weights2`` (C x C x 3 x 3).
    """

    def __init__(self, first: torch.Tensor, second: torch.Tensor):
        super().__init__()
        self.register_buffer("haar_weights1", first.detach().clone())
        self.register_buffer("haar_weights2", second.detach().clone())

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        features = F.conv2d(image, self.haar_weights1, padding=1)
        return F.conv2d(features, self.haar_weights2, padding=1)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        features = F.conv_transpose2d(features, self.haar_weights2, padding=1)
        return F.conv_transpose2d(features, self.haar_weights1, padding=1)


# ---------------------------------------------------------------- the network


class DSN(nn.Module):
    """Deep Symmetric Network: ``E``, ``coupling_blocks`` affine couplings, ``E^T``.

    ``operations`` is laid out as in the reference: index 0 holds the encoder
    used by the forward direction, 1..N the coupling blocks, N+1 the encoder
    used by the reverse direction (both hold the same filters).

    Parameters
    ----------
    config : DSNConfig
        Sizes; ``DSNConfig.paper()`` has 11,573,568 trainable weights.
    encoder_filters : tuple of torch.Tensor, optional
        ``(first, second)`` filters of shapes ``(C, 3, 3, 3)`` and ``(C, C, 3, 3)``,
        e.g. from ``encoder_from_vgg16``. Default: ``default_encoder_filters(config)``.
    """

    def __init__(self, config: DSNConfig | None = None,
                 encoder_filters: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.config = config or DSNConfig.paper()
        first, second = encoder_filters or default_encoder_filters(self.config)
        _check_filter_shapes(self.config, first, second)
        self.operations = nn.ModuleList(
            [LinearEncoder(first, second)]
            + [AffineCoupling(self.config) for _ in range(self.config.coupling_blocks)]
            + [LinearEncoder(first, second)]
        )

    @property
    def couplings(self) -> list[AffineCoupling]:
        return list(self.operations[1:-1])

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        """Map an ``(N, 3, H, W)`` float RGB batch in [0, 1] to the same shape.

        ``rev=False`` degrades (enhanced -> original), ``rev=True`` enhances.
        The output is not clamped.
        """
        if not rev:
            features = self.operations[0].encode(x)
            for coupling in self.couplings:
                features = coupling(features)
            return self.operations[-1].decode(features)
        features = self.operations[-1].encode(x)
        for coupling in reversed(self.couplings):
            features = coupling.inverse(features)
        return self.operations[0].decode(features)


# ---------------------------------------------------------------- encoder filters


def default_encoder_filters(config: DSNConfig, seed: int = DEFAULT_ENCODER_SEED
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic, well-conditioned encoder filters for when no VGG16 file is given.

    The first layer's ``C`` filters are the rows of a seeded random
    semi-orthogonal ``C x 27`` matrix (27 = 3 colours x 3 x 3 taps) divided by 3;
    the second layer is a seeded random orthogonal ``C x C`` channel mix at the
    centre tap (the other eight taps are zero). For ``C >= 27`` this makes
    ``E^T E`` the identity away from the image border (each pixel lies in nine
    3x3 windows and the filters form a tight frame with bound 1/9), so a freshly
    initialised DSN maps an image to itself there and darkens the outermost
    pixel ring (by 1/3 at edges and 5/9 at corners).

    Parameters
    ----------
    config : DSNConfig
        Gives ``C = feature_channels`` and ``image_channels``.
    seed : int
        Seed of the private random generator (default 0).

    Returns
    -------
    first, second : torch.Tensor
        float32 tensors of shape ``(C, 3, 3, 3)`` and ``(C, C, 3, 3)``.
    """
    generator = torch.Generator().manual_seed(seed)
    channels, taps = config.feature_channels, KERNEL_SIZE * KERNEL_SIZE
    patch_size = config.image_channels * taps
    first = _semi_orthogonal(channels, patch_size, generator) / KERNEL_SIZE
    first = first.reshape(channels, config.image_channels, KERNEL_SIZE, KERNEL_SIZE)
    second = torch.zeros(channels, channels, KERNEL_SIZE, KERNEL_SIZE, dtype=torch.float64)
    second[:, :, KERNEL_SIZE // 2, KERNEL_SIZE // 2] = _semi_orthogonal(channels, channels, generator)
    return first.float(), second.float()


def encoder_from_vgg16(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the encoder filters from a local VGG16 state dict, as DSN does.

    DSN's encoder is VGG16's conv1_1 and conv1_2 weights without their biases.
    Both torchvision naming (``features.0.weight``, ``features.2.weight``) and
    the converted Caffe naming of DSN's ``vgg16.weight`` (``conv1_1.weight``,
    ``conv1_2.weight``) are accepted. The file is read with
    ``torch.load(weights_only=True)``; nothing is downloaded. Note that
    torchvision's VGG16 differs from the Caffe VGG16 that DSN used, so a
    network built on it will not match a reference checkpoint (which carries
    its own filters anyway).

    Returns
    -------
    first, second : torch.Tensor
        float32 tensors of shape ``(64, 3, 3, 3)`` and ``(64, 64, 3, 3)``.

    Raises
    ------
    ValueError
        If the file is not a state dict holding those two weights.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for unreadable files
        raise ValueError(f"{path}: not a readable VGG16 state dict ({load_error_reason(error)})") from None
    known_names = (("features.0.weight", "features.2.weight"), ("conv1_1.weight", "conv1_2.weight"))
    if isinstance(state, dict):
        for first_name, second_name in known_names:
            if first_name in state and second_name in state:
                first, second = state[first_name].float(), state[second_name].float()
                if tuple(first.shape) != (64, 3, 3, 3) or tuple(second.shape) != (64, 64, 3, 3):
                    raise ValueError(f"{path}: {first_name}/{second_name} have shapes "
                                     f"{tuple(first.shape)}/{tuple(second.shape)}, not VGG16's")
                return first.clone(), second.clone()
    raise ValueError(f"{path}: no VGG16 conv1 weights (expected keys features.0.weight and "
                     "features.2.weight, or conv1_1.weight and conv1_2.weight)")


# ---------------------------------------------------------------- sizes


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of weights with ``requires_grad`` (11,573,568 for the paper config)."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def macs_per_pixel(config: DSNConfig) -> int:
    """Multiply-accumulates per image pixel of one pass (either direction).

    Counts every full-resolution convolution: the encoder and its adjoint, and
    F, G, H of each coupling block. The attention's 1x1 convolutions act on one
    pooled vector per image and the element-wise operations are left out.
    The paper configuration gives 11,578,752 (about 3.2 TMAC for 640x427).
    """
    taps = KERNEL_SIZE * KERNEL_SIZE
    width = config.subnet_channels
    wide = width * config.residual_expansion
    split, rest = config.split_channels, config.feature_channels - config.split_channels

    def subnet(in_channels: int, out_channels: int) -> int:
        residual = 2 * width * wide
        return taps * (in_channels * width + config.subnet_residual_blocks * residual + width * out_channels)

    encoder = taps * (config.image_channels + config.feature_channels) * config.feature_channels
    coupling = subnet(rest, split) + subnet(split, rest) + subnet(split, rest)
    return 2 * encoder + config.coupling_blocks * coupling


# ---------------------------------------------------------------- helpers


def _init_conv(conv: nn.Conv2d, init, gain: float) -> None:
    """Reference initialisation: ``init(weight) * gain`` and a zero bias."""
    with torch.no_grad():
        init(conv.weight)
        conv.weight.mul_(gain)
        conv.bias.zero_()


def _semi_orthogonal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """The semi-orthogonal matrix nearest to a seeded Gaussian one (float64)."""
    gaussian = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    left, _, right = torch.linalg.svd(gaussian, full_matrices=False)
    return left @ right


def _check_filter_shapes(config: DSNConfig, first: torch.Tensor, second: torch.Tensor) -> None:
    channels, image = config.feature_channels, config.image_channels
    expected = ((channels, image, KERNEL_SIZE, KERNEL_SIZE), (channels, channels, KERNEL_SIZE, KERNEL_SIZE))
    if (tuple(first.shape), tuple(second.shape)) != expected:
        raise ValueError(f"encoder filters have shapes {tuple(first.shape)} and {tuple(second.shape)}, "
                         f"the config needs {expected[0]} and {expected[1]}")
