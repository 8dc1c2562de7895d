"""The job program's models (imports PyTorch): ``mlp``, ``cnn`` and ``charlm``, each built from a
config dict that is stored in the model file's meta, so a model file is rebuilt from data alone.

* ``mlp``: flattens its input, hidden linear layers with ReLU (``hidden``, default [128, 64]),
  a linear head over the classes;
* ``cnn``: for ``[C, H, W]`` inputs: two 3x3 convolutions with ReLU, each followed by a 2x2 max
  pooling while the image is at least 2x2, and a linear head;
* ``charlm``: a small causal transformer over characters: token and position embeddings,
  ``layers`` pre-norm blocks of ``heads``-head self-attention and a 4x MLP, a final norm and a
  linear head over the vocabulary; ``context`` characters at most.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional

ARCHS = ("mlp", "cnn", "charlm")
DEFAULT_HIDDEN = [128, 64]
CNN_CHANNELS = [16, 32]
CHARLM_DEFAULTS = {"d_model": 64, "layers": 2, "heads": 2, "context": 64}
MAX_WIDTH = 65536
MAX_LAYERS = 64


class ConfigError(ValueError):
    """A model config that does not describe a model this program builds."""


def _int(config: dict[str, Any], key: str, low: int = 1, high: int = MAX_WIDTH) -> int:
    value = config.get(key)
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"config {key!r} must be an integer from {low} to {high}, not {value!r}")
    return value


def _ints(config: dict[str, Any], key: str, most: int = MAX_LAYERS) -> list[int]:
    value = config.get(key)
    if not isinstance(value, list) or len(value) > most:
        raise ConfigError(f"config {key!r} must be a list of at most {most} sizes")
    for item in value:
        if type(item) is not int or not 1 <= item <= MAX_WIDTH:
            raise ConfigError(f"config {key!r}: {item!r} is not a size from 1 to {MAX_WIDTH}")
    return list(value)


def mlp_config(shape: list[int], classes: int, hidden: list[int] | None = None) -> dict[str, Any]:
    return {
        "classes": classes,
        "hidden": list(DEFAULT_HIDDEN if hidden is None else hidden),
        "inputs": math.prod(shape),
    }


def cnn_config(shape: list[int], classes: int) -> dict[str, Any]:
    if len(shape) != 3:
        raise ConfigError(
            f"cnn needs image samples shaped [channels, height, width], the data's are {shape} "
            "(use mlp for feature vectors)"
        )
    return {
        "channels": list(CNN_CHANNELS),
        "classes": classes,
        "height": shape[1],
        "in_channels": shape[0],
        "width": shape[2],
    }


def charlm_config(vocab: int) -> dict[str, Any]:
    return {"vocab": vocab, **CHARLM_DEFAULTS}


class MLP(nn.Module):  # type: ignore[misc]
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        width = _int(config, "inputs", high=1 << 24)
        layers: list[nn.Module] = []
        for size in _ints(config, "hidden"):
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, _int(config, "classes")))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class CNN(nn.Module):  # type: ignore[misc]
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        channels = _ints(config, "channels", most=2)
        if len(channels) != 2:
            raise ConfigError("config 'channels' of a cnn must be two sizes")
        height, width = _int(config, "height", high=4096), _int(config, "width", high=4096)
        self.conv1 = nn.Conv2d(_int(config, "in_channels", high=64), channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.pools: list[bool] = []
        for _ in range(2):
            pool = height >= 2 and width >= 2
            self.pools.append(pool)
            if pool:
                height, width = height // 2, width // 2
        features = channels[1] * height * width
        if features > 1 << 22:
            raise ConfigError("the images are too large for this cnn (resize them smaller)")
        self.head = nn.Linear(features, _int(config, "classes"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu(self.conv1(x))
        if self.pools[0]:
            x = functional.max_pool2d(x, 2)
        x = functional.relu(self.conv2(x))
        if self.pools[1]:
            x = functional.max_pool2d(x, 2)
        return self.head(x.flatten(1))


class Block(nn.Module):  # type: ignore[misc]
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(width, dim=2)
        size = width // self.heads
        q = q.view(batch, length, self.heads, size).transpose(1, 2)
        k = k.view(batch, length, self.heads, size).transpose(1, 2)
        v = v.view(batch, length, self.heads, size).transpose(1, 2)
        scores = (q @ k.transpose(2, 3)) / math.sqrt(size)
        scores = scores.masked_fill(mask[:length, :length], float("-inf"))
        attended = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, length, width)
        x = x + self.proj(attended)
        return x + self.fc2(functional.gelu(self.fc1(self.norm2(x))))


class CharLM(nn.Module):  # type: ignore[misc]
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        vocab = _int(config, "vocab", high=1 << 20)
        d_model = _int(config, "d_model", high=4096)
        heads = _int(config, "heads", high=64)
        if d_model % heads:
            raise ConfigError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.context = _int(config, "context", high=4096)
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(self.context, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, heads) for _ in range(_int(config, "layers", high=MAX_LAYERS))
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        upper = torch.ones(self.context, self.context, dtype=torch.bool).triu(1)
        self.register_buffer("mask", upper, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        positions = torch.arange(length, device=x.device)
        h = self.tokens(x) + self.positions(positions)
        mask: torch.Tensor = self.mask
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.norm(h))


def build(arch: str, config: dict[str, Any]) -> nn.Module:
    """The model ``arch`` described by ``config`` (fresh weights from torch's current seed)."""
    if not isinstance(config, dict):
        raise ConfigError("a model config must be an object")
    if arch == "mlp":
        return MLP(config)
    if arch == "cnn":
        return CNN(config)
    if arch == "charlm":
        return CharLM(config)
    raise ConfigError(f"unknown arch {arch!r} (one of {', '.join(ARCHS)})")
