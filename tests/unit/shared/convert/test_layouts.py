"""Plans and original-layout keys, against key names real checkpoints use."""

import pytest

from shared.convert.layouts import Ref, diffusers_refs, original_refs
from shared.convert.plan import plan_for

COMPONENTS = ("text_encoder", "diffusion_model", "decoder", "image_encoder")

# (family, component, diffusers name, key in the original CompVis / Stability checkpoint)
KNOWN = [
    ("sd-v1", "diffusion_model", "conv_in.weight", "model.diffusion_model.input_blocks.0.0.weight"),
    (
        "sd-v1",
        "diffusion_model",
        "time_embedding.linear_2.bias",
        "model.diffusion_model.time_embed.2.bias",
    ),
    (
        "sd-v1",
        "diffusion_model",
        "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
    ),
    (
        "sd-v1",
        "diffusion_model",
        "down_blocks.1.resnets.0.conv_shortcut.weight",
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    ),
    (
        "sd-v1",
        "diffusion_model",
        "down_blocks.2.downsamplers.0.conv.bias",
        "model.diffusion_model.input_blocks.9.0.op.bias",
    ),
    (
        "sd-v1",
        "diffusion_model",
        "down_blocks.3.resnets.1.time_emb_proj.weight",
        "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight",
    ),
    (
        "sd-v1",
        "diffusion_model",
        "mid_block.resnets.1.conv2.weight",
        "model.diffusion_model.middle_block.2.out_layers.3.weight",
    ),
    (
        "sd-v1",
        "diffusion_model",
        "mid_block.attentions.0.proj_out.weight",
        "model.diffusion_model.middle_block.1.proj_out.weight",
    ),
    (
        "sd-v1",
        "diffusion_model",
        "up_blocks.0.upsamplers.0.conv.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
    ),
    (
        "sd-v1",
        "diffusion_model",
        "up_blocks.1.upsamplers.0.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
    ),
    (
        "sd-v1",
        "diffusion_model",
        "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight",
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
    ),
    ("sd-v1", "diffusion_model", "conv_norm_out.weight", "model.diffusion_model.out.0.weight"),
    (
        "sd-v1",
        "decoder",
        "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
    ),
    (
        "sd-v1",
        "decoder",
        "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
    ),
    (
        "sd-v1",
        "decoder",
        "decoder.mid_block.attentions.0.to_out.0.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.weight",
    ),
    ("sd-v1", "decoder", "post_quant_conv.bias", "first_stage_model.post_quant_conv.bias"),
    (
        "sd-v1",
        "image_encoder",
        "encoder.down_blocks.1.downsamplers.0.conv.weight",
        "first_stage_model.encoder.down.1.downsample.conv.weight",
    ),
    (
        "sd-v1",
        "image_encoder",
        "encoder.mid_block.resnets.1.norm2.weight",
        "first_stage_model.encoder.mid.block_2.norm2.weight",
    ),
    (
        "sd-v1",
        "image_encoder",
        "encoder.conv_norm_out.bias",
        "first_stage_model.encoder.norm_out.bias",
    ),
    (
        "sd-v1",
        "text_encoder",
        "text_model.encoder.layers.11.mlp.fc2.bias",
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.bias",
    ),
    (
        "sd-v2",
        "text_encoder",
        "text_model.embeddings.position_embedding.weight",
        "cond_stage_model.model.positional_embedding",
    ),
    (
        "sd-v2",
        "text_encoder",
        "text_model.encoder.layers.3.mlp.fc1.weight",
        "cond_stage_model.model.transformer.resblocks.3.mlp.c_fc.weight",
    ),
    (
        "sd-v2",
        "text_encoder",
        "text_model.final_layer_norm.weight",
        "cond_stage_model.model.ln_final.weight",
    ),
]


@pytest.mark.parametrize(("family", "component", "name", "original"), KNOWN)
def test_original_keys_are_the_real_ones(family, component, name, original):
    assert original_refs(family, component, name)[0] == Ref(original)


def test_openclip_q_k_v_are_rows_of_the_fused_projection():
    layer = "text_model.encoder.layers.22.self_attn"
    fused = "cond_stage_model.model.transformer.resblocks.22.attn"
    assert original_refs("sd-v2", "text_encoder", f"{layer}.k_proj.weight") == [
        Ref(f"{fused}.in_proj_weight", (1024, 2048))
    ]
    assert original_refs("sd-v2", "text_encoder", f"{layer}.v_proj.bias") == [
        Ref(f"{fused}.in_proj_bias", (2048, 3072))
    ]


@pytest.mark.parametrize("family", ["sd-v1", "sd-v2"])
def test_every_planned_tensor_has_its_own_original_key(family):
    seen = set()
    for component in COMPONENTS:
        for weight in plan_for(family, component):
            ref = original_refs(family, component, weight.name)[0]
            assert (ref.key, ref.rows) not in seen, weight.name
            seen.add((ref.key, ref.rows))


def test_plans_cover_keras_cv_models_weight_for_weight():
    """Counts of keras-cv 0.9.0's model.weights (the reference tests check every shape)."""
    counts = {c: len(plan_for("sd-v1", c)) for c in COMPONENTS}
    assert counts == {
        "text_encoder": 196,
        "diffusion_model": 686,
        "decoder": 140,
        "image_encoder": 108,
    }
    assert len(plan_for("sd-v2", "text_encoder")) == 372  # 23 layers
    assert len(plan_for("sd-v2", "diffusion_model")) == 686


def test_diffusers_aliases_for_older_and_newer_libraries():
    assert diffusers_refs("text_encoder", "text_model.final_layer_norm.bias") == [
        Ref("text_model.final_layer_norm.bias"),
        Ref("final_layer_norm.bias"),  # transformers 5 saves CLIP without the prefix
    ]
    assert diffusers_refs("decoder", "decoder.mid_block.attentions.0.to_out.0.weight") == [
        Ref("decoder.mid_block.attentions.0.to_out.0.weight"),
        Ref("decoder.mid_block.attentions.0.proj_attn.weight"),  # diffusers < 0.14
    ]


def test_kernel_torch_shapes():
    weight = next(w for w in plan_for("sd-v1", "diffusion_model") if w.name == "conv_in.weight")
    assert weight.shape == (3, 3, 4, 320) and weight.torch_shapes() == ((320, 4, 3, 3),)
    proj = next(
        w
        for w in plan_for("sd-v1", "diffusion_model")
        if w.name == "down_blocks.0.attentions.0.proj_in.weight"
    )
    # A 1x1 convolution in SD 1.x; some conversions store it as a Linear.
    assert proj.torch_shapes() == ((320, 320, 1, 1), (320, 320))
