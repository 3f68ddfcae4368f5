"""Cheap previews of a denoising step: latents → RGB by a fixed linear map, no VAE.

Each latent channel contributes a fixed amount of red, green and blue (the
factors below are least-squares fits published for the SD 1.x, SDXL and FLUX.1 VAEs),
so a preview costs one small matrix product and a PNG encode of an image 1/8
the final side. A latent layout without known factors gets a grey image
from the mean over channels.
"""

from __future__ import annotations

import io

import torch
from PIL import Image

_RGB_FACTORS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "sd": (
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    "sdxl": (
        (0.3920, 0.4054, 0.4549),
        (-0.2634, -0.0196, 0.0653),
        (0.0568, 0.1687, -0.0755),
        (-0.3112, -0.2359, -0.2076),
    ),
    "flux": (
        (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
        (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
        (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
        (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
        (-0.1262, -0.0982, -0.0778),
    ),
}
_RGB_BIAS: dict[str, tuple[float, float, float]] = {"flux": (-0.0329, -0.0718, -0.0851)}


def latents_to_rgb(latents: torch.Tensor, family: str) -> torch.Tensor:
    """(C, h, w) latents → (h, w, 3) uint8 RGB."""
    latents = latents.detach().to(device="cpu", dtype=torch.float32)
    factors = _RGB_FACTORS.get(family)
    if factors is not None and latents.shape[0] == len(factors):
        rgb = torch.einsum("chw,ck->hwk", latents, torch.tensor(factors))
        rgb = rgb + torch.tensor(_RGB_BIAS.get(family, (0.0, 0.0, 0.0)))
    else:
        rgb = latents.mean(dim=0, keepdim=True).permute(1, 2, 0).expand(-1, -1, 3)
    return ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)


def preview_png(latents: torch.Tensor, family: str) -> bytes:
    """One image's latents (C, h, w) as a small PNG (h × w pixels)."""
    pixels = latents_to_rgb(latents, family).contiguous().numpy()
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG", compress_level=1)
    return out.getvalue()


def unpack_flux_latents(latents: torch.Tensor, height: int, width: int,
                        vae_scale_factor: int = 8) -> torch.Tensor:
    """FLUX keeps latents packed as (B, h/2·w/2, C·4) tokens; unpack them to (B, C, h, w)."""
    batch, _, packed_channels = latents.shape
    h = 2 * (height // (vae_scale_factor * 2))
    w = 2 * (width // (vae_scale_factor * 2))
    latents = latents.reshape(batch, h // 2, w // 2, packed_channels // 4, 2, 2)
    latents = latents.permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, packed_channels // 4, h, w)
