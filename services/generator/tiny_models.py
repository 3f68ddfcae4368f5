"""Builds tiny randomly initialised diffusers pipelines (and LoRAs for them) on disk.

``python -m services.generator.tiny_models <dir>`` writes::

    <dir>/tiny-sd/        Stable Diffusion 1.x-shaped pipeline (one CLIP text encoder)
    <dir>/tiny-sdxl/      SDXL-shaped pipeline (two CLIP text encoders, text_time conditioning)
    <dir>/tiny-flux/      FLUX.1-shaped pipeline (CLIP + T5 encoders, MMDiT transformer, 16 latent channels)
    <dir>/loras/tiny-sd-style.safetensors     a LoRA for tiny-sd's UNet attention
    <dir>/loras/tiny-sdxl-style.safetensors   a LoRA for tiny-sdxl's UNet attention

The pipelines are built from config objects and saved with ``save_pretrained``
so the service loads them with ``from_pretrained``, exactly as it loads a real
checkpoint. Each VAE has four blocks and so downsamples by 8 like the real
ones (latents are 1/8 of the image side). The CLIP tokenizer is built from a
byte-level vocabulary written here, so nothing is downloaded. Everything is
seeded: two builds give identical weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

TOKENIZER_MAX_LENGTH = 77
LORA_RANK = 4
# Modules of the UNet's attention blocks that the tiny LoRAs adapt.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
BUILD_INFO = "tiny_models.json"
# Bump when the shapes change, so `make models` output is recognisably stale.
BUILD_VERSION = 3


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character map."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def build_clip_tokenizer() -> object:
    """A CLIP BPE tokenizer over single bytes (no merges): every byte is one token.

    Real CLIP vocabularies have 49k merged tokens; this one has 514, which
    keeps the embedding tables tiny and still tokenises any prompt.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(char + "</w>" for char in chars)]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENIZER_MAX_LENGTH)


def _clip_config(vocab_size: int, projection_dim: int = 32) -> object:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=TOKENIZER_MAX_LENGTH, projection_dim=projection_dim,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu", layer_norm_eps=1e-5,
    )


def _vae() -> object:
    from diffusers import AutoencoderKL

    # Four blocks → three 2x downsamplings: an 8x smaller latent, like SD's VAE.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        sample_size=128, scaling_factor=0.18215,
    )


def _scheduler() -> object:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="trailing", steps_offset=1,
    )


def build_sd(out: Path) -> None:
    """Saves a Stable Diffusion 1.x-shaped pipeline to ``out``."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_clip_tokenizer()
    torch.manual_seed(0)
    # Narrow enough that a step costs little more than the per-layer overhead, as on a GPU,
    # so batching pays off on a CPU too.
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=4,
    )
    torch.manual_seed(1)
    vae = _vae()
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer)))  # type: ignore[arg-type]
    pipe: Any = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def build_sdxl(out: Path) -> None:
    """Saves an SDXL-shaped pipeline (two text encoders, text_time conditioning) to ``out``."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer()
    time_embed_dim = 8
    torch.manual_seed(10)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim, transformer_layers_per_block=(1, 2),
        # 6 micro-conditioning numbers (sizes, crop) embedded + the pooled text embedding.
        projection_class_embeddings_input_dim=6 * time_embed_dim + 32,
        cross_attention_dim=64, norm_num_groups=8,
    )
    torch.manual_seed(11)
    vae = _vae()
    torch.manual_seed(12)
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer)))  # type: ignore[arg-type]
    torch.manual_seed(13)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(tokenizer_2)))  # type: ignore[arg-type]
    pipe: Any = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler(), force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def build_t5_tokenizer() -> object:
    """A T5 (Unigram) tokenizer over printable ASCII: one piece per character, word starts marked."""
    from transformers import T5Tokenizer

    chars = [chr(code) for code in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in chars] + [("▁" + char, -2.5) for char in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_flux(out: Path) -> None:
    """Saves a FLUX.1-shaped pipeline (CLIP + T5 encoders, MMDiT transformer, 16-channel VAE) to ``out``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer()
    torch.manual_seed(20)
    # 16 latent channels packed 2x2 → 64 transformer input channels, as in FLUX.1.
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(21)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 8, 8, 16), layers_per_block=1, norm_num_groups=4,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
    )
    torch.manual_seed(22)
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer)))  # type: ignore[arg-type]
    torch.manual_seed(23)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,  # type: ignore[arg-type]
        pad_token_id=0, eos_token_id=1,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe: Any = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def build_unet_lora(unet_dir: Path, out_file: Path, seed: int) -> None:
    """Writes a random rank-4 LoRA (PEFT key format) for every attention projection of a saved UNet.

    The file is built from the UNet's weight shapes alone, so building it
    needs no peft; loading it with ``load_lora_weights`` does.
    """
    from safetensors.torch import load_file, save_file

    weights = load_file(str(unet_dir / "diffusion_pytorch_model.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    lora: dict[str, torch.Tensor] = {}
    for key in sorted(weights):
        module, _, kind = key.rpartition(".")
        if kind != "weight" or ".attn" not in module or not module.endswith(LORA_TARGETS):
            continue
        out_features, in_features = weights[key].shape
        # Both factors non-zero (unlike a freshly initialised LoRA) so the adapter visibly changes images.
        lora[f"unet.{module}.lora_A.weight"] = torch.randn(LORA_RANK, in_features, generator=generator) * 0.3
        lora[f"unet.{module}.lora_B.weight"] = torch.randn(out_features, LORA_RANK, generator=generator) * 0.3
    if not lora:
        raise RuntimeError(f"no attention projections found in {unet_dir}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(out_file), metadata={"format": "pt"})


def build_all(root: Path) -> None:
    """Builds every tiny pipeline and LoRA under ``root`` (replacing what is there)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, builder in (("tiny-sd", build_sd), ("tiny-sdxl", build_sdxl), ("tiny-flux", build_flux)):
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        builder(target)
    build_unet_lora(root / "tiny-sd" / "unet", root / "loras" / "tiny-sd-style.safetensors", seed=100)
    build_unet_lora(root / "tiny-sdxl" / "unet", root / "loras" / "tiny-sdxl-style.safetensors", seed=101)
    (root / BUILD_INFO).write_text(json.dumps({"version": BUILD_VERSION}) + "\n")


def is_built(root: Path) -> bool:
    """True when ``root`` holds a complete build of the current version."""
    try:
        info = json.loads((root / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return False
    return bool(info.get("version") == BUILD_VERSION)


def ensure_built(preferred: Path, fallback: Path) -> Path:
    """``preferred`` when it holds a current build (``make setup`` made one), else a build in ``fallback``."""
    if is_built(preferred):
        return preferred
    if not is_built(fallback):
        build_all(fallback)
    return fallback


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m services.generator.tiny_models <dir>``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", type=Path, help="where to write the models (e.g. models)")
    args = parser.parse_args(argv)
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    build_all(args.directory)
    print(f"tiny models written to {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
