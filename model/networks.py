"""The networks of masked style modeling, on torchvision's ResNet-18.

Kosugi & Yamasaki, "Personalized Image Enhancement Featuring Masked Style
Modeling", IEEE TCSVT 2023, Sec. III (Fig. 2):

* style embedding E_s: s = f(retouched) - f(original), f a ResNet-18 whose
  last block omits its final ReLU, average pooled (512-d, images at 256 px);
* content embedding E_c: ResNet-18 features pooled to p x p (p = 2), a 1x1
  convolution to 512 / p^2 channels, flattened (512-d);
* masked token: a learnable, L2-normalised 512-d style stand-in;
* transformer T: tokens of 1024 channels interleaving style (even) and
  content (odd), 6 layers, 8 heads, feed-forward 2048; the last token (the
  unseen image) is mapped to a 512-d style in whitened PCA coordinates;
* stylized enhancer G: a U-Net on a ResNet-18 encoder whose four up blocks
  each receive the style; its output is a residual, y = x + G(x, s).

Attribute names follow the public reference code so that the paper config's
state dicts have its keys and shapes exactly (``msm-reference-keys.json``);
:mod:`model.reference` reads and writes its checkpoint layout. Images are
ImageNet-normalised RGB (:func:`normalize`). No network reads files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize` (not clamped)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return images * std + mean


@dataclass(frozen=True)
class MSMConfig:
    """Every size of the networks.

    Attributes
    ----------
    resnet_blocks : tuple of int
        BasicBlocks per ResNet stage ((2, 2, 2, 2): ResNet-18).
    style_dim : int
        Style and content vector size; the ResNet's last width (512).
    content_grid : int
        p: the content map is pooled to p x p before the 1x1 convolution (2).
    transformer_layers, transformer_heads, transformer_ff : int
        Encoder layers (6), attention heads (8), feed-forward width (2048).
    dropout : float
        Transformer dropout (0.1).
    image_size : int
        Side at which the enhancer is trained and evaluated, pixels (512).
    embed_size : int
        Side at which the style and content embeddings see images (256).
    """

    resnet_blocks: tuple = (2, 2, 2, 2)
    style_dim: int = 512
    content_grid: int = 2
    transformer_layers: int = 6
    transformer_heads: int = 8
    transformer_ff: int = 2048
    dropout: float = 0.1
    image_size: int = 512
    embed_size: int = 256

    def __post_init__(self):
        object.__setattr__(self, "resnet_blocks", tuple(int(n) for n in self.resnet_blocks))
        if len(self.resnet_blocks) != 4 or min(self.resnet_blocks) < 1:
            raise ValueError(f"MSMConfig.resnet_blocks must be 4 positive counts, got {self.resnet_blocks}")
        if self.style_dim != 512:
            raise ValueError("MSMConfig.style_dim must be 512, the width of ResNet-18's last stage")
        for name in ("content_grid", "transformer_layers", "transformer_heads", "transformer_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"MSMConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.style_dim % (self.content_grid ** 2):
            raise ValueError(f"MSMConfig.content_grid {self.content_grid}: {self.style_dim} is not divisible by p^2")
        if self.token_dim % self.transformer_heads:
            raise ValueError(f"MSMConfig.transformer_heads {self.transformer_heads} does not divide {self.token_dim}")
        if self.image_size % 32 or self.image_size < 32:
            raise ValueError(f"MSMConfig.image_size must be a multiple of 32, got {self.image_size}")
        if self.embed_size < 32:
            raise ValueError(f"MSMConfig.embed_size must be at least 32, got {self.embed_size}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"MSMConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def token_dim(self) -> int:
        """Transformer width: a style and a content vector interleaved (1024)."""
        return 2 * self.style_dim

    @classmethod
    def paper(cls) -> "MSMConfig":
        """The paper's networks: 90,756,432 parameters."""
        return cls()

    @classmethod
    def small(cls) -> "MSMConfig":
        """A CPU-sized variant: one block per ResNet stage, 2 transformer layers, 128-px images."""
        return cls(resnet_blocks=(1, 1, 1, 1), transformer_layers=2, transformer_heads=4, transformer_ff=512,
                   image_size=128, embed_size=64)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "resnet_blocks": list(self.resnet_blocks)}

    @classmethod
    def from_dict(cls, values: dict) -> "MSMConfig":
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown MSMConfig fields: {', '.join(unknown)}")
        return cls(**{**values, "resnet_blocks": tuple(values.get("resnet_blocks", (2, 2, 2, 2)))})


def _resnet(config: MSMConfig) -> ResNet:
    """torchvision's ResNet with BasicBlocks (ResNet-18 for the paper), random weights."""
    return ResNet(BasicBlock, list(config.resnet_blocks))


def _features(resnet: ResNet, x: torch.Tensor, *, final_relu: bool) -> torch.Tensor:
    """Stem and layer1..layer4; the last block's final ReLU only if ``final_relu``."""
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    x = resnet.layer3(resnet.layer2(resnet.layer1(x)))
    for block in list(resnet.layer4)[:-1]:
        x = block(x)
    last = resnet.layer4[-1]
    identity = x if last.downsample is None else last.downsample(x)
    out = last.bn2(last.conv2(last.relu(last.bn1(last.conv1(x))))) + identity
    return F.relu(out) if final_relu else out


class StyleEmbedding(nn.Module):
    """E_s: s = f(retouched) - f(original), (B, 3, 256, 256) pairs -> (B, 512).

    The two images run as one batch (shared BatchNorm statistics in training,
    as in the reference). ResNet's ``fc`` is kept for the reference keys but
    unused and frozen.
    """

    def __init__(self, config: MSMConfig):
        super().__init__()
        self.resnet18 = _resnet(config)
        self.resnet18.fc.requires_grad_(False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """f: (B, 3, H, W) -> (B, 512), the last block without its ReLU, average pooled."""
        return torch.flatten(self.resnet18.avgpool(_features(self.resnet18, images, final_relu=False)), 1)

    def forward(self, original: torch.Tensor, retouched: torch.Tensor) -> torch.Tensor:
        features = self.embed(torch.cat([original, retouched]))
        return features[original.shape[0]:] - features[:original.shape[0]]


class ContentEmbedding(nn.Module):
    """E_c: (B, 3, 256, 256) -> (B, 512): ResNet features pooled to p x p, 1x1 conv to 512/p^2, flattened."""

    def __init__(self, config: MSMConfig):
        super().__init__()
        grid = config.content_grid
        self.resnet18 = _resnet(config)
        self.resnet18.fc.requires_grad_(False)
        self.avgpool = nn.AdaptiveAvgPool2d((grid, grid))
        self.conv1x1 = nn.Conv2d(config.style_dim, config.style_dim // grid ** 2, kernel_size=1, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.conv1x1(self.avgpool(_features(self.resnet18, images, final_relu=True))), 1)


class MaskedToken(nn.Module):
    """The learnable style of the unseen image: a bias-free Linear(1, 512) of 1, L2-normalised."""

    def __init__(self, config: MSMConfig):
        super().__init__()
        self.masked_token = nn.Linear(1, config.style_dim, bias=False)

    def forward(self, batch_size: int) -> torch.Tensor:
        """(batch_size, 512), every row the same unit vector."""
        token = self.masked_token.weight[:, 0]
        return (token / token.norm()).expand(batch_size, -1)


def interleave(styles: torch.Tensor, contents: torch.Tensor) -> torch.Tensor:
    """(B, T, D) styles and contents -> (B, T, 2D) tokens, styles on even channels, contents on odd."""
    return torch.stack([styles, contents], dim=-1).flatten(-2)


class StyleTransformer(nn.Module):
    """T: preferred (style, content) tokens + (masked token, content) of the unseen image -> its style.

    Returns the last token's output through ``fc``: (B, 512), the predicted
    style in whitened PCA coordinates (:class:`model.pca.StylePCA`).
    """

    def __init__(self, config: MSMConfig):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=config.token_dim, nhead=config.transformer_heads,
                                           dim_feedforward=config.transformer_ff, dropout=config.dropout,
                                           batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=config.transformer_layers,
                                                         enable_nested_tensor=False)
        self.fc = nn.Linear(config.token_dim, config.style_dim)

    def forward(self, styles: torch.Tensor, contents: torch.Tensor,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """styles, contents (B, T, 512); padding_mask (B, T) bool, True = ignored."""
        encoded = self.transformer_encoder(interleave(styles, contents), src_key_padding_mask=padding_mask)
        return self.fc(encoded[:, -1])


def _conv3x3(inplanes: int, planes: int) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, kernel_size=3, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Convolution (3x3 or 1x1, no bias), optional BatchNorm, ReLU."""

    def __init__(self, inplanes: int, planes: int, *, batchnorm: bool = True, kernel_size: int = 3):
        super().__init__()
        self.conv = (_conv3x3(inplanes, planes) if kernel_size == 3
                     else nn.Conv2d(inplanes, planes, kernel_size=1, bias=False))
        if batchnorm:
            self.batchnorm = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if hasattr(self, "batchnorm"):
            x = self.batchnorm(x)
        return F.relu(x)


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BN with a projected (1x1 conv + BN) shortcut, as the reference ``ResBlk``."""

    def __init__(self, inplanes: int, planes: int):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(inplanes, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.bn3(self.conv3(x)))


class UpBlock(nn.Module):
    """One decoder stage: upsample + conv the deeper feature, project the style, concat with the skip."""

    def __init__(self, inplanes: int, planes: int, style_dim: int, *, residual: bool = True):
        super().__init__()
        self.conv1 = ConvBlock(inplanes, planes)
        self.conv2 = ConvBlock(style_dim, planes, batchnorm=False, kernel_size=1)
        if residual:
            self.resblock = ResidualBlock(planes * 3, planes)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        size = skip.shape[-2:]
        x = self.conv1(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        style = F.interpolate(self.conv2(style[:, :, None, None]), size=size, mode="bilinear", align_corners=False)
        out = torch.cat([x, skip, style.to(x.dtype)], dim=1)
        return self.resblock(out) if hasattr(self, "resblock") else out


class StylizedEnhancer(nn.Module):
    """G: (B, 3, H, W) normalised image and (B, 512) style -> residual delta, same shape.

    Encoder: ResNet stem (down0), maxpool + layer1 (down1), layer2, layer3,
    layer4 + global average pool (down4). Decoder: four up blocks to the skip
    sizes, each concatenating the projected style; a final x2 bilinear
    upsample and 3x3 convolution. H and W must be multiples of 32.
    """

    def __init__(self, config: MSMConfig):
        super().__init__()
        resnet = _resnet(config)
        self.down0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.down1 = nn.Sequential(resnet.maxpool, resnet.layer1)
        self.down2, self.down3 = resnet.layer2, resnet.layer3
        self.down4 = nn.Sequential(resnet.layer4, resnet.avgpool)
        dim = config.style_dim
        self.up1 = UpBlock(512, 256, dim)
        self.up2 = UpBlock(256, 128, dim)
        self.up3 = UpBlock(128, 64, dim)
        self.up4 = UpBlock(64, 64, dim, residual=False)
        self.up6 = _conv3x3(64 * 3, 3)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encoder's five features of ``x``; they do not depend on the style, so several styles can share them."""
        x0 = self.down0(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        return x0, x1, x2, x3, self.down4(x3)

    def decode(self, features: tuple[torch.Tensor, ...], style: torch.Tensor, size) -> torch.Tensor:
        """The residual at ``size`` (H, W) from :meth:`encode`'s features and a (B, 512) style."""
        x0, x1, x2, x3, x4 = features
        out = self.up4(self.up3(self.up2(self.up1(x4, x3, style), x2, style), x1, style), x0, style)
        return self.up6(F.interpolate(out, size=size, mode="bilinear", align_corners=False))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), style, x.shape[-2:])


class MSM(nn.Module):
    """The five networks of masked style modeling, under their reference module names."""

    #: Reference module (and checkpoint file) names, in order.
    MODULES = ("style_embedding", "content_embedding", "masked_token", "transformer_encoder", "stylized_enhancer")

    def __init__(self, config: MSMConfig):
        super().__init__()
        self.config = config
        self.style_embedding = StyleEmbedding(config)
        self.content_embedding = ContentEmbedding(config)
        self.masked_token = MaskedToken(config)
        self.transformer = StyleTransformer(config)
        self.enhancer = StylizedEnhancer(config)

    def module(self, name: str) -> nn.Module:
        """The network of a reference module name (``transformer_encoder`` -> ``transformer``, ...)."""
        attribute = {"transformer_encoder": "transformer", "stylized_enhancer": "enhancer"}.get(name, name)
        if name not in self.MODULES:
            raise KeyError(f"unknown module {name!r}; expected one of {', '.join(self.MODULES)}")
        return getattr(self, attribute)
