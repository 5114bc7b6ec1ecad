"""Where a tensor named in the diffusers layout sits in each checkpoint layout.

Plans (`shared.convert.plan`) name every weight by its diffusers key. A source in another
layout answers with `Ref`s: the key it stores the tensor under and, for OpenCLIP's fused
attention projection, the rows of that tensor to take.

* **diffusers** folders: the key itself, or an alias older or newer libraries write
  (transformers 5 saves CLIP without the `text_model.` prefix; diffusers before 0.14
  named the VAE's attention `query`/`key`/`value`/`proj_attn`).
* **original** single files (CompVis / Stability / A1111 `.safetensors`): the UNet under
  `model.diffusion_model.` with LDM's block numbering, the VAE under `first_stage_model.`
  (decoder blocks numbered from the bottom), the text encoder under
  `cond_stage_model.transformer.` (SD 1.x, Hugging Face CLIP) or
  `cond_stage_model.model.` (SD 2.x, OpenCLIP: q, k and v fused in `in_proj_weight`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.convert.plan import ARCHITECTURES, PlannedComponent

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
TEXT_MODEL = "text_model."
VAE_UP_BLOCKS = 4


@dataclass(frozen=True)
class Ref:
    """A stored tensor, or `rows` [start, stop) of its first axis."""

    key: str
    rows: tuple[int, int] | None = None

    def describe(self) -> str:
        return self.key if self.rows is None else f"{self.key}[{self.rows[0]}:{self.rows[1]}]"


# ----------------------------------------------------------------------- diffusers


_OLD_VAE_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
_VAE_ATTENTION_RE = re.compile(r"^(.*\.attentions\.0)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$")


def diffusers_refs(component: PlannedComponent, name: str) -> list[Ref]:
    """Keys a diffusers folder may store `name` under, the current one first."""
    refs = [Ref(name)]
    if component == "text_encoder" and name.startswith(TEXT_MODEL):
        refs.append(Ref(name.removeprefix(TEXT_MODEL)))
    elif component in ("decoder", "image_encoder"):
        match = _VAE_ATTENTION_RE.match(name)
        if match:
            block, proj, param = match.groups()
            refs.append(Ref(f"{block}.{_OLD_VAE_ATTENTION[proj]}.{param}"))
    return refs


# ------------------------------------------------------------------------ original

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    """`rest` with its leading module name (one or two dotted parts) renamed by `table`."""
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


_UNET_BLOCK_RE = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)$"
)
_UNET_MID_RE = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)$")
_UNET_FIXED = {
    "conv_in.": "input_blocks.0.0.",
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def _unet_original(name: str) -> str:
    for old, new in _UNET_FIXED.items():
        if name.startswith(old):
            return UNET_PREFIX + new + name[len(old) :]
    match = _UNET_MID_RE.match(name)
    if match:
        kind, index, rest = match.groups()
        if kind == "resnets":  # resnet, attention, resnet
            return UNET_PREFIX + f"middle_block.{2 * int(index)}.{_rename_head(rest, _RESNET)}"
        return UNET_PREFIX + f"middle_block.1.{rest}"
    match = _UNET_BLOCK_RE.match(name)
    assert match, name
    block, index, kind, sub, rest = match.groups()
    i, j = int(index), int(sub)
    if kind == "downsamplers":  # LDM's input blocks: conv_in, then 3 per level
        return UNET_PREFIX + f"input_blocks.{3 * i + 3}.0.op.{rest.removeprefix('conv.')}"
    if kind == "upsamplers":
        # Up block 0 has no attention, so its upsampler is the layer's second module.
        return UNET_PREFIX + f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.{rest}"
    group, layer = (
        ("input_blocks", 3 * i + j + 1) if block == "down_blocks" else ("output_blocks", 3 * i + j)
    )
    if kind == "resnets":
        return UNET_PREFIX + f"{group}.{layer}.0.{_rename_head(rest, _RESNET)}"
    return UNET_PREFIX + f"{group}.{layer}.1.{rest}"


_VAE_BLOCK_RE = re.compile(
    r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)"
    r"\.(\d+)\.(.*)$"
)
_VAE_MID_RE = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)$")


def _vae_original(name: str) -> str:
    match = _VAE_BLOCK_RE.match(name)
    if match:
        side, _, index, kind, sub, rest = match.groups()
        i = int(index)
        if side == "decoder":
            i = VAE_UP_BLOCKS - 1 - i  # the original numbers decoder blocks bottom-up
        group = "down" if side == "encoder" else "up"
        if kind == "resnets":
            return VAE_PREFIX + f"{side}.{group}.{i}.block.{sub}.{_rename_head(rest, _VAE_RESNET)}"
        sampler = "downsample" if kind == "downsamplers" else "upsample"
        return VAE_PREFIX + f"{side}.{group}.{i}.{sampler}.{rest}"
    match = _VAE_MID_RE.match(name)
    if match:
        side, kind, index, rest = match.groups()
        if kind == "resnets":
            resnet = _rename_head(rest, _VAE_RESNET)
            return VAE_PREFIX + f"{side}.mid.block_{int(index) + 1}.{resnet}"
        return VAE_PREFIX + f"{side}.mid.attn_1.{_rename_head(rest, _VAE_ATTENTION)}"
    for side in ("encoder", "decoder"):
        if name.startswith(f"{side}.conv_norm_out."):
            return VAE_PREFIX + f"{side}.norm_out." + name.rsplit(".", 1)[1]
    return VAE_PREFIX + name  # conv_in, conv_out, quant_conv, post_quant_conv


_CLIP_LAYER_RE = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.*)$")
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_QKV = ("q_proj", "k_proj", "v_proj")


def _openclip(name: str, width: int) -> Ref:
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
    }
    if name in fixed:
        return Ref(OPENCLIP_PREFIX + fixed[name])
    if name.startswith("text_model.final_layer_norm."):
        return Ref(OPENCLIP_PREFIX + "ln_final." + name.rsplit(".", 1)[1])
    match = _CLIP_LAYER_RE.match(name)
    assert match, name
    layer, rest = match.groups()
    block = f"{OPENCLIP_PREFIX}transformer.resblocks.{layer}"
    module, param = rest.rsplit(".", 1)
    if module.startswith("self_attn.") and module.split(".")[1] in _QKV:
        which = _QKV.index(module.split(".")[1])
        return Ref(f"{block}.attn.in_proj_{param}", (which * width, (which + 1) * width))
    return Ref(f"{block}.{_OPENCLIP_LAYER[module]}.{param}")


def original_refs(family: str, component: PlannedComponent, name: str) -> list[Ref]:
    """Keys an original-layout single file may store `name` under."""
    if component == "diffusion_model":
        return [Ref(_unet_original(name))]
    if component in ("decoder", "image_encoder"):
        return [Ref(_vae_original(name))]
    arch = ARCHITECTURES[family]
    if arch.openclip:  # SD 2.x
        return [_openclip(name, arch.context_dim)]
    # SD 1.x: Hugging Face CLIP under the transformer prefix (older transformers
    # versions saved it without `text_model.`).
    return [Ref(CLIP_PREFIX + name), Ref(CLIP_PREFIX + name.removeprefix(TEXT_MODEL))]
