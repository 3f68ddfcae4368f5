"""Latent previews: cheap, right-sized PNGs, and FLUX's packed latents unpacked correctly."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from services.generator.preview import latents_to_rgb, preview_png, unpack_flux_latents

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux"])
def test_preview_is_a_png_one_eighth_of_the_image(family: str) -> None:
    channels = 16 if family == "flux" else 4
    latents = torch.randn(channels, 12, 20, generator=torch.Generator().manual_seed(0))
    png = preview_png(latents, family)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (20, 12)


def test_rgb_mapping_uses_the_family_factors() -> None:
    latents = torch.zeros(4, 2, 2)
    assert latents_to_rgb(latents, "sd").tolist() == [[[128, 128, 128]] * 2] * 2  # zero latents → mid grey
    latents[3] = 1.0  # SD's 4th channel pulls strongly towards yellow (low blue)
    pixel = latents_to_rgb(latents, "sd")[0, 0].tolist()
    assert pixel[2] < pixel[0] < 128
    assert latents_to_rgb(latents, "sd").dtype == torch.uint8
    assert latents_to_rgb(torch.full((4, 1, 1), 100.0), "sdxl").max() <= 255  # clamped, no wrap-around


def test_latent_layouts_without_factors_preview_in_grey() -> None:
    latents = torch.randn(16, 4, 4, generator=torch.Generator().manual_seed(1))
    rgb = latents_to_rgb(latents, "sd")  # 16 channels: not SD's layout
    assert torch.equal(rgb[..., 0], rgb[..., 1]) and torch.equal(rgb[..., 1], rgb[..., 2])
    assert not torch.equal(latents_to_rgb(latents, "flux")[..., 0], latents_to_rgb(latents, "flux")[..., 2])


def test_flux_unpacking_inverts_diffusers_packing() -> None:
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 8, 12)
    packed = FluxPipeline._pack_latents(latents, 2, 16, 8, 12)
    assert torch.equal(unpack_flux_latents(packed, height=64, width=96), latents)
