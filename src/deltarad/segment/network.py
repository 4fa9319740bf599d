"""DeltaRad's multi-task longitudinal network.

One nnU-Net-style encoder (conv-instance norm-leaky ReLU blocks, strided convolutions for
downsampling; topology from :mod:`deltarad.segment.plan`) is applied to the baseline and to the
registered follow-up with shared weights (Siamese, Jin et al. 2021); each timepoint's input is
the stack of its channels (the plan's ``channels``: the registration reference, then the
study's other co-registered images, as nnU-Net's input channels). At every level the two
feature maps are fused (difference and/or concatenation). Heads, chosen by the preset:

- segmentation: a U-Net decoder (shared weights) per timepoint, with deep supervision;
- response (one logit) and survival (one log-risk score): pooled fused features of the deepest
  `outcome_scales` levels (multi-scale, Amyar et al. 2022) through a small MLP;
- reconstruction: a skip-free decoder that rebuilds each input image (every channel) from its
  bottleneck (Amyar et al. 2022's auxiliary task).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deltarad.segment.plan import Preset, TopologyPlan


def _pad(kernel: list[int]) -> list[int]:
    return [k // 2 for k in kernel]


class ConvBlock(nn.Sequential):
    """Two conv-instance norm-leaky ReLU units; the first may downsample by its stride."""

    def __init__(self, c_in: int, c_out: int, kernel: list[int], stride: list[int]) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, kernel, stride, _pad(kernel)),
            nn.InstanceNorm3d(c_out, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(c_out, c_out, kernel, 1, _pad(kernel)),
            nn.InstanceNorm3d(c_out, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class Encoder(nn.Module):
    """The shared (Siamese) encoder over one timepoint's channel stack: returns the feature map
    of every level, finest first."""

    def __init__(self, plan: TopologyPlan) -> None:
        super().__init__()
        chans = [len(plan.channels), *plan.features]
        self.stages = nn.ModuleList(
            ConvBlock(chans[i], chans[i + 1], plan.kernels[i], plan.strides[i])
            for i in range(len(plan.features))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Fusion(nn.Module):
    """Joins baseline and follow-up features of one level (Jin et al.'s multi-scale fusion)."""

    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        n_in = {"difference": 1, "concat": 2, "both": 3}[mode]
        self.mix = nn.Sequential(
            nn.Conv3d(n_in * channels, channels, 1),
            nn.InstanceNorm3d(channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, base: torch.Tensor, follow: torch.Tensor) -> torch.Tensor:
        if self.mode == "difference":
            parts = [follow - base]
        elif self.mode == "concat":
            parts = [base, follow]
        else:
            parts = [base, follow, follow - base]
        return self.mix(torch.cat(parts, dim=1))


class Decoder(nn.Module):
    """U-Net decoder (transposed-conv upsampling); optional skips and deep-supervision outputs."""

    def __init__(
        self, plan: TopologyPlan, out_channels: int, skips: bool, deep_supervision: int
    ) -> None:
        super().__init__()
        self.use_skips = skips
        feats = plan.features
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.outputs = nn.ModuleList()
        for level in range(len(feats) - 1, 0, -1):
            c_deep, c_up = feats[level], feats[level - 1]
            stride = plan.strides[level]
            self.ups.append(nn.ConvTranspose3d(c_deep, c_up, stride, stride))
            c_in = 2 * c_up if skips else c_up
            self.blocks.append(ConvBlock(c_in, c_up, plan.kernels[level - 1], [1, 1, 1]))
            self.outputs.append(nn.Conv3d(c_up, out_channels, 1))
        self.deep_supervision = max(1, min(deep_supervision, len(self.outputs)))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs finest first: [full resolution, 1/2, 1/4, ...] up to `deep_supervision`."""
        x = features[-1]
        outputs = []
        layers = zip(self.ups, self.blocks, self.outputs, strict=True)
        for i, (up, block, head) in enumerate(layers):
            x = up(x)
            if self.use_skips:
                x = torch.cat([x, features[-2 - i]], dim=1)
            x = block(x)
            if i >= len(self.blocks) - self.deep_supervision:
                outputs.append(head(x))
        return outputs[::-1]


class OutcomeHead(nn.Module):
    """Pooled multi-scale fused features -> (response logit, log-risk score)."""

    def __init__(self, channels: list[int], dropout: float = 0.2) -> None:
        super().__init__()
        width = sum(channels)
        hidden = max(16, min(128, width // 2))
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.LeakyReLU(0.01), nn.Dropout(dropout), nn.Linear(hidden, 2)
        )

    def forward(self, fused: list[torch.Tensor]) -> torch.Tensor:
        pooled = torch.cat([f.mean(dim=(2, 3, 4)) for f in fused], dim=1)
        return self.mlp(pooled)


@dataclass
class NetworkOutput:
    """seg[t]: list of logits per deep-supervision level (finest first) for timepoint t (0 base,
    1 follow-up); outcome: (batch, 2) = response logit, log-risk; recon[t]: rebuilt image."""

    seg: list[list[torch.Tensor]] | None
    outcome: torch.Tensor | None
    recon: list[torch.Tensor] | None


class LongitudinalNet(nn.Module):
    """Siamese multi-task network over a (baseline, follow-up) pair in baseline space."""

    def __init__(self, plan: TopologyPlan, preset: Preset, deep_supervision: int = 3) -> None:
        super().__init__()
        self.preset = preset
        self.encoder = Encoder(plan)
        n_levels = len(plan.features)
        self.decoder = (
            Decoder(plan, 1, skips=True, deep_supervision=deep_supervision)
            if preset.segments
            else None
        )
        self.outcome_levels = list(range(max(0, n_levels - preset.outcome_scales), n_levels))
        if preset.outcome:
            self.fusions = nn.ModuleDict(
                {str(i): Fusion(plan.features[i], preset.fusion) for i in self.outcome_levels}
            )
            self.outcome_head = OutcomeHead([plan.features[i] for i in self.outcome_levels])
        self.reconstructor = (
            Decoder(plan, len(plan.channels), skips=False, deep_supervision=1)
            if "reconstruction" in preset.heads
            else None
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def forward(
        self,
        base: torch.Tensor,
        follow: torch.Tensor,
        outcome: bool = True,
        segment: bool = True,
        reconstruct: bool = True,
    ) -> NetworkOutput:
        """Heads switched off by a flag are not computed (inference needs only some of them)."""
        # One pass of the shared encoder over both timepoints (the batch holds both).
        feats = self.encoder(torch.cat([base, follow], dim=0))
        n = base.shape[0]
        f_base = [f[:n] for f in feats]
        f_follow = [f[n:] for f in feats]
        seg = recon = out = None
        if self.decoder is not None and segment:
            both = self.decoder(feats)
            seg = [[o[:n] for o in both], [o[n:] for o in both]]
        if self.preset.outcome and outcome:
            fused = [self.fusions[str(i)](f_base[i], f_follow[i]) for i in self.outcome_levels]
            out = self.outcome_head(fused)
        if self.reconstructor is not None and reconstruct:
            rebuilt = self.reconstructor(feats)[0]
            recon = [rebuilt[:n], rebuilt[n:]]
        return NetworkOutput(seg, out, recon)
