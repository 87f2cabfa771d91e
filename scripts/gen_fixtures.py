"""Generate the test fixtures: tiny seeded CLIP checkpoints and reference outputs.

Everything the Rust tests compare against is computed here, in PyTorch, by
following the official ClearCLIP code (github mc-lan/ClearCLIP):
  - `open_clip/transformer.py` VisionTransformer.forward (dense path, lines
    ~500-567), `interpolate_pos_encoding` and `custom_attn` (~569-625);
  - `clearclip_segmentor.py` `__init__` (text features), `forward_feature`,
    `forward_slide`, `postprocess_result`, `compute_padsize`;
  - the mmseg test pipeline `Resize(scale=(2048, 448), keep_ratio=True)`, which
    is mmcv.imrescale with cv2 bilinear.
NACLIP and PAMR follow github sinahmr/NACLIP (commit 0cac3a6): `clip/model.py`
`custom_attn`, `gaussian_window`, `get_attention_addition` (the "reduced" last
block: no residual, no FFN), `pamr.py`, and `naclip.py` `predict` (PAMR on the
logits at the original size, guided by the network input resized there).
The reference runs in float32 (the official code runs in fp16 on GPU); a few
arrays (`dense_f16.*`, `text_f16.*`) repeat it on the model cast to float16.

Checkpoints are a seeded random `transformers.CLIPModel` (Hugging Face layout)
and the same weights renamed to the OpenAI/open_clip layout. Weights are
rounded to bfloat16 values first, so the f16 (HF file) and bf16 (open_clip
file) copies hold exactly the same numbers and share one set of references.
Before any reference is computed, the open_clip model loaded from the renamed
weights is checked to give the same image and text embeddings as transformers.

Usage:
  python scripts/gen_fixtures.py fixtures/             # the committed fixtures
  python scripts/gen_fixtures.py --vit-b16 /tmp/b16.safetensors
      # a ViT-B/16-shaped random checkpoint (open_clip layout, f32) for benchmarks
  python scripts/gen_fixtures.py --dense-onnx /tmp/b16.safetensors /tmp/b16_dense.onnx
      # that checkpoint's ClearCLIP dense encoder for one 448x448 window, as ONNX
      # (the onnxruntime-web peer of scripts/bench_browser.mjs; needs `pip install onnx`,
      # and checks the export with onnxruntime when that is installed)
"""
import argparse
import copy
import json
import math
import os
import sys

import cv2
import numpy as np
import open_clip
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
import transformers
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

SEED = 20241126
JPEG_STRIDE = 4
MEAN = [122.771, 116.746, 104.094]  # clearclip_segmentor.py SegDataPreProcessor
STD = [68.501, 66.632, 70.323]

TINY = dict(
    vision=dict(width=128, layers=3, patch=16, image=64, mlp=512),
    text=dict(width=64, layers=2, mlp=256),
    embed=64,
)


# ---------------------------------------------------------------- checkpoints


def make_hf_model(vision, text, embed, seed):
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=text["width"],
            intermediate_size=text["mlp"],
            num_hidden_layers=text["layers"],
            num_attention_heads=text["width"] // 64,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=embed,
        ),
        vision_config=dict(
            hidden_size=vision["width"],
            intermediate_size=vision["mlp"],
            num_hidden_layers=vision["layers"],
            num_attention_heads=vision["width"] // 64,
            image_size=vision["image"],
            patch_size=vision["patch"],
            hidden_act="quick_gelu",
            projection_dim=embed,
        ),
        projection_dim=embed,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            # Random init is tiny (std 0.02); widen it so that attention is not
            # uniform and features differ between modes, then round to bf16.
            if p.dim() >= 2:
                p.normal_(0.0, 1.5 / math.sqrt(p.shape[-1]))
            elif p.numel() > 1:
                p.add_(torch.randn_like(p) * 0.1)
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
        model.logit_scale.fill_(math.log(100.0))
    return model


def hf_to_openclip(sd, n_vision, n_text):
    """Rename Hugging Face CLIP tensors to the OpenAI/open_clip layout."""
    out = {}

    def block(src, dst):
        q, k, v = (sd[f"{src}.self_attn.{n}_proj.weight"] for n in "qkv")
        qb, kb, vb = (sd[f"{src}.self_attn.{n}_proj.bias"] for n in "qkv")
        out[f"{dst}.attn.in_proj_weight"] = torch.cat([q, k, v], 0)
        out[f"{dst}.attn.in_proj_bias"] = torch.cat([qb, kb, vb], 0)
        for a, b in [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                     ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
            out[f"{dst}.{b}.weight"] = sd[f"{src}.{a}.weight"]
            out[f"{dst}.{b}.bias"] = sd[f"{src}.{a}.bias"]

    v = "vision_model"
    out["visual.class_embedding"] = sd[f"{v}.embeddings.class_embedding"]
    out["visual.conv1.weight"] = sd[f"{v}.embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"]
    for a, b in [("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")]:
        out[f"visual.{b}.weight"] = sd[f"{v}.{a}.weight"]
        out[f"visual.{b}.bias"] = sd[f"{v}.{a}.bias"]
    for i in range(n_vision):
        block(f"{v}.encoder.layers.{i}", f"visual.transformer.resblocks.{i}")
    out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    t = "text_model"
    out["token_embedding.weight"] = sd[f"{t}.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"]
    for i in range(n_text):
        block(f"{t}.encoder.layers.{i}", f"transformer.resblocks.{i}")
    out["ln_final.weight"] = sd[f"{t}.final_layer_norm.weight"]
    out["ln_final.bias"] = sd[f"{t}.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    out["logit_scale"] = sd["logit_scale"]
    return out


def make_openclip_model(vision, text, embed, state_dict):
    model = CLIP(
        embed_dim=embed,
        vision_cfg=CLIPVisionCfg(layers=vision["layers"], width=vision["width"], head_width=64,
                                 mlp_ratio=vision["mlp"] / vision["width"],
                                 patch_size=vision["patch"], image_size=vision["image"]),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=text["width"],
                             heads=text["width"] // 64, layers=text["layers"],
                             mlp_ratio=text["mlp"] / text["width"]),
        quick_gelu=True,
    ).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


def check_layouts_agree(hf, oc, image_size):
    torch.manual_seed(1)
    image = torch.randn(2, 3, image_size, image_size)
    tokens = open_clip.tokenize(["a photo of a cat.", "sky"])
    with torch.no_grad():
        a = hf.get_image_features(pixel_values=image)
        b = oc.encode_image(image)
        # HF pools at the first eos id (49407): the same place as open_clip's argmax.
        c = hf.get_text_features(input_ids=tokens)
        d = oc.encode_text(tokens)
    a = getattr(a, "pooler_output", a)
    c = getattr(c, "pooler_output", c)
    err = max((a - b).abs().max().item(), (c - d).abs().max().item())
    assert err < 1e-4, f"HF and open_clip layouts disagree: {err}"
    return err


# ---------------------------------------------------------- ClearCLIP reference


def interpolate_pos_encoding(visual, npatch_plus_cls, w, h):
    """open_clip/transformer.py VisionTransformer.interpolate_pos_encoding."""
    npatch = npatch_plus_cls - 1
    N = visual.positional_embedding.shape[0] - 1
    if npatch == N and w == h:
        return visual.positional_embedding
    class_pos_embed = visual.positional_embedding[[0]]
    patch_pos_embed = visual.positional_embedding[1:]
    dim = visual.positional_embedding.shape[-1]
    w0 = w // visual.patch_size[0]
    h0 = h // visual.patch_size[1]
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def gaussian_window(dim1, dim2, std=1.0):
    """NACLIP clip/model.py VisionTransformer.gaussian_window."""
    constant = 1 / (std * math.sqrt(2))
    ks = []
    for dim in [dim1, dim2]:
        start = -(dim - 1) / 2.0
        ks.append(torch.linspace(start=start * constant, end=(start + (dim - 1)) * constant, steps=dim,
                                 dtype=torch.float))
    return torch.exp(-(torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0))


def attention_addition(dim1, dim2, window):
    """NACLIP clip/model.py get_attention_addition(adjust_for_cls=True): the window
    convolved ('same') with the one-hot map of every patch."""
    m = torch.einsum("ij,kl->ijkl", torch.eye(dim1), torch.eye(dim2))
    m = m.permute((0, 3, 1, 2)).contiguous()
    out = F.conv2d(m.view(-1, dim1, dim2).unsqueeze(1), window.unsqueeze(0).unsqueeze(1), padding="same").squeeze(1)
    out = out.view(dim1 * dim2, dim1 * dim2)
    v_adjusted = torch.vstack([torch.zeros((1, dim1 * dim2)), out])
    return torch.hstack([torch.zeros((dim1 * dim2 + 1, 1)), v_adjusted])


def naclip_omega(n_patches, std):
    window = gaussian_window(*[side * 2 - 1 for side in n_patches], std=std)
    return attention_addition(*n_patches, window).unsqueeze(0)


def custom_attn(attn_layer, x, model_type, n_patches=None, neighbourhood_std=None):
    """open_clip/transformer.py VisionTransformer.custom_attn (x is L, N, D), plus
    NACLIP's strategy ('NACLIP': k-k scores + Gaussian addition, clip/model.py) and,
    for the knob test, 'KK' (k-k) with an optional neighbourhood addition."""
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    if model_type == "vanilla":
        attn_weights = F.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1)
    elif model_type == "MaskCLIP":
        mask = torch.empty(q.shape[1], q.shape[1], dtype=q.dtype, device=q.device)
        mask.fill_(float("-inf"))
        mask.fill_diagonal_(0)
        attn_weights = F.softmax(mask.unsqueeze(0).repeat(q.shape[0], 1, 1), dim=-1)
    elif model_type == "SCLIP":
        qq = torch.bmm(q, q.transpose(1, 2)) * scale
        kk = torch.bmm(k, k.transpose(1, 2)) * scale
        attn_weights = F.softmax(qq, dim=-1) + F.softmax(kk, dim=-1)
    elif model_type == "ClearCLIP":
        attn_weights = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
    elif model_type == "NACLIP":
        attn_weights = torch.bmm(k, k.transpose(1, 2)) * scale
        attn_weights += naclip_omega(n_patches, 5.0).to(attn_weights)  # made on the CPU
        attn_weights = F.softmax(attn_weights, dim=-1)
    elif model_type == "KK":
        attn_weights = torch.bmm(k * scale, k.transpose(1, 2))
        if neighbourhood_std:
            attn_weights = attn_weights + naclip_omega(n_patches, neighbourhood_std).to(attn_weights)
        attn_weights = F.softmax(attn_weights, dim=-1)
    else:
        raise ValueError(model_type)
    out = torch.bmm(attn_weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(out)


def dense_features(visual, x, model_type="ClearCLIP", ignore_residual=True, residual_alpha=1.0,
                   neighbourhood_std=None):
    """open_clip/transformer.py VisionTransformer.forward as modified by ClearCLIP:
    returns the projected patch tokens (not normalised), shape [B, n_patches, embed].
    `residual_alpha` scales the attention in the kept residual (the paper's ablation)."""
    B, nc, w, h = x.shape
    n_patches = (w // visual.patch_size[0], h // visual.patch_size[1])
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    if x.shape[1] != visual.positional_embedding.shape[0]:
        x = x + interpolate_pos_encoding(visual, x.shape[1], w, h).to(x.dtype)
    else:
        x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    x = x.permute(1, 0, 2)  # NLD -> LND (open_clip >= 2.24 blocks are batch-first)
    blocks = visual.transformer.resblocks
    for blk in blocks[:-1]:
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2)
    blk = blocks[-1]
    attn = custom_attn(blk.attn, blk.ln_1(x), model_type, n_patches, neighbourhood_std)
    if ignore_residual:
        output = attn
    else:
        x_out = x + residual_alpha * attn
        output = x_out + blk.mlp(blk.ln_2(x_out))
    x = output.permute(1, 0, 2)
    x = visual.ln_post(x)
    return x[:, 1:] @ visual.proj


MODES = {  # mode name -> (model_type, ignore_residual) in the official code
    "vanilla": ("vanilla", False),
    "maskclip": ("MaskCLIP", True),
    "sclip": ("SCLIP", True),
    "clearclip": ("ClearCLIP", True),
    "naclip": ("NACLIP", True),  # NACLIP arch='reduced': no residual, no FFN
}


# ----------------------------------------------------------------- PAMR (NACLIP)


def local_affinity(x, dilations, kernel):
    """pamr.py LocalAffinity.forward: one conv per dilation, replicate padding."""
    B, K, H, W = x.size()
    x = x.reshape(B * K, 1, H, W)
    outs = []
    for d in dilations:
        x_pad = F.pad(x, [d] * 4, mode="replicate")
        outs.append(F.conv2d(x_pad, kernel, dilation=d))
    return torch.cat(outs, 1).view(B, K, -1, H, W)


def pamr_kernels():
    """pamr.py _init_aff of LocalAffinity (centre 1, neighbour -1), LocalAffinityCopy
    (neighbour 1) and LocalStDev (all 9 positions)."""
    diff = torch.zeros(8, 1, 3, 3)
    copy = torch.zeros(8, 1, 3, 3)
    positions = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    for i, (r, c) in enumerate(positions):
        diff[i, 0, 1, 1] = 1
        diff[i, 0, r, c] = -1
        copy[i, 0, r, c] = 1
    std = torch.zeros(9, 1, 3, 3)
    for i in range(9):
        std[i, 0, i // 3, i % 3] = 1
    return diff, copy, std


def pamr(x, mask, num_iter=10, dilations=(8, 16)):
    """pamr.py PAMR.forward (the kernels made on the CPU, moved to x's device and dtype)."""
    diff, copy, std_k = (k.to(x) for k in pamr_kernels())
    mask = F.interpolate(mask, size=x.size()[-2:], mode="bilinear", align_corners=True)
    x_std = local_affinity(x, dilations, std_k).std(2, keepdim=True)
    x = -torch.abs(local_affinity(x, dilations, diff)) / (1e-8 + 0.1 * x_std)
    x = x.mean(1, keepdim=True)
    x = F.softmax(x, 2)
    for _ in range(num_iter):
        m = local_affinity(mask, dilations, copy)
        mask = (m * x).sum(2)
    return mask


def class_embeddings(model, names, templates):
    """clearclip_segmentor.py __init__: per-template normalise, mean, renormalise."""
    feats = []
    with torch.no_grad():
        for name in names:
            tokens = open_clip.tokenize([t(name) for t in templates]).to(model.positional_embedding.device)
            f = model.encode_text(tokens)
            f = f / f.norm(dim=-1, keepdim=True)
            f = f.mean(dim=0)
            feats.append(f / f.norm())
    return torch.stack(feats)


def compute_padsize(H, W, patch_size):
    l = r = t = b = 0
    if W % patch_size:
        lr = patch_size - (W % patch_size)
        l = lr // 2
        r = lr - l
    if H % patch_size:
        tb = patch_size - (H % patch_size)
        t = tb // 2
        b = tb - t
    return l, r, t, b


def mmcv_rescale(img, short_side, long_cap=2048):
    """mmseg Resize(scale=(long_cap, short_side), keep_ratio=True) = mmcv.imrescale, cv2 bilinear."""
    h, w = img.shape[:2]
    scale = min(long_cap / max(h, w), short_side / min(h, w))
    new_w, new_h = int(w * float(scale) + 0.5), int(h * float(scale) + 0.5)
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def segment(model, img_rgb, query_features, query_idx, *, mode="clearclip", short_side=448,
            crop=448, stride=224, prob_thd=0.0, logit_scale=50.0, pamr_steps=0):
    visual = model.visual
    patch = visual.patch_size[0]
    resized = mmcv_rescale(img_rgb, short_side)
    x = (torch.from_numpy(resized).float() - torch.tensor(MEAN)) / torch.tensor(STD)
    img = x.permute(2, 0, 1).unsqueeze(0).to(visual.proj)  # the model's device and dtype
    model_type, ignore_residual = MODES[mode]

    def forward_feature(crop_img):
        f = dense_features(visual, crop_img, model_type, ignore_residual)
        f = f / f.norm(dim=-1, keepdim=True)
        logits = f @ query_features.T
        w, h = crop_img[0].shape[-2] // patch, crop_img[0].shape[-1] // patch
        logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], w, h)
        return F.interpolate(logits, size=crop_img.shape[-2:], mode="bilinear")

    # clearclip_segmentor.py forward_slide
    h_stride = w_stride = stride
    h_crop = w_crop = crop
    batch_size, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((batch_size, query_features.shape[0], h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    with torch.no_grad():
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1 = h_idx * h_stride
                x1 = w_idx * w_stride
                y2 = min(y1 + h_crop, h_img)
                x2 = min(x1 + w_crop, w_img)
                y1 = max(y2 - h_crop, 0)
                x1 = max(x2 - w_crop, 0)
                crop_img = img[:, :, y1:y2, x1:x2]
                H, W = crop_img.shape[2:]
                pad = compute_padsize(H, W, patch)
                if any(pad):
                    crop_img = F.pad(crop_img, pad)
                crop_seg_logit = forward_feature(crop_img)
                if any(pad):
                    l, t = pad[0], pad[2]
                    crop_seg_logit = crop_seg_logit[:, :, t:t + H, l:l + W]
                preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1),
                                                int(preds.shape[2] - y2)))
                count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    preds = preds / count_mat
    seg_logits = F.interpolate(preds, size=img_rgb.shape[:2], mode="bilinear")
    if pamr_steps:
        # naclip.py predict: the network input resized to the original size guides PAMR.
        guide = F.interpolate(img, size=img_rgb.shape[:2], mode="bilinear")
        seg_logits = pamr(guide, seg_logits, num_iter=pamr_steps)

    # postprocess_result
    seg_logits = seg_logits[0] * logit_scale
    seg_logits = seg_logits.softmax(0)
    query_idx = torch.tensor(query_idx, device=seg_logits.device)
    num_cls, num_queries = int(query_idx.max()) + 1, len(query_idx)
    if num_cls != num_queries:
        seg_logits = seg_logits.unsqueeze(0)
        cls_index = F.one_hot(query_idx).T.view(num_cls, num_queries, 1, 1)
        seg_logits = (seg_logits * cls_index).max(1)[0]
    seg_pred = seg_logits.argmax(0, keepdim=True)
    seg_pred[seg_logits.max(0, keepdim=True)[0] < prob_thd] = 0
    return resized, seg_logits, seg_pred[0]


def split_classes(spec):
    """'sky;horse,pony' -> names ['sky','horse','pony'], indices [0,1,1] (get_cls_idx)."""
    names, idx = [], []
    for i, cls in enumerate(spec.split(";")):
        for n in cls.split(","):
            names.append(n.strip())
            idx.append(i)
    return names, idx


# ------------------------------------------------------------------------ main


def save_checkpoint(path, tensors, dtype, extra=None):
    t = {k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}
    if extra:
        t.update(extra)
    save_file(t, path, metadata={"format": "pt"})


def generate_fixtures(out_dir):
    import skimage  # recorded in the metadata only (the photos come from it)

    os.makedirs(out_dir, exist_ok=True)
    v, t, e = TINY["vision"], TINY["text"], TINY["embed"]
    hf = make_hf_model(v, t, e, SEED)
    sd = {k: p.detach().clone() for k, p in hf.state_dict().items()}
    oc_sd = hf_to_openclip(sd, v["layers"], t["layers"])
    oc = make_openclip_model(v, t, e, oc_sd)
    layout_err = check_layouts_agree(hf, oc, v["image"])

    hf_tensors = {k: x for k, x in sd.items() if not k.endswith("position_ids")}
    # Older HF files carry int64 position_ids; the loader must ignore them.
    save_checkpoint(os.path.join(out_dir, "tiny_hf_f16.safetensors"), hf_tensors, torch.float16,
                    extra={"text_model.embeddings.position_ids": torch.arange(77).unsqueeze(0)})
    save_checkpoint(os.path.join(out_dir, "tiny_openclip_bf16.safetensors"), oc_sd, torch.bfloat16)

    ref = {}
    meta = {
        "generator": "scripts/gen_fixtures.py",
        "seed": SEED,
        "versions": {
            "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "open_clip_torch": open_clip.__version__,
            "opencv": cv2.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__, "scikit-image": skimage.__version__,
        },
        "tiny_config": TINY,
        "hf_vs_openclip_max_abs_diff": layout_err,
        "templates": [tpl("{}") for tpl in OPENAI_IMAGENET_TEMPLATES],
    }

    # Tokenizer cases: ids from open_clip's reference tokenizer (context 77).
    token_cases = [
        "a photo of a cat.", "A PHOTO   of\ta Cat!!", "traffic-light, (red)", "it's the dog's toy",
        "café crème brûlée", "日本の猫", "emoji 🐱🐶 face", "3.14 apples & 2 pears",
        "sky;horse,pony", "  leading and trailing  ",
        " ".join(["long"] * 100),
    ]
    meta["tokenizer_cases"] = [
        {"text": s, "ids": [int(i) for i in open_clip.tokenize([s])[0].tolist()]} for s in token_cases
    ]

    # Text: class embeddings over the 80 templates, and over one template.
    text_names = ["sky", "horse", "pony", "grass", "cat", "a very " + "very " * 80 + "long name"]
    meta["text_names"] = text_names
    ref["text.templates80"] = class_embeddings(oc, text_names, OPENAI_IMAGENET_TEMPLATES)
    ref["text.single"] = class_embeddings(oc, text_names, [lambda c: f"a photo of a {c}."])

    # Dense features per mode on a non-square input (pos-embed interpolation),
    # and ClearCLIP on the native size (no interpolation).
    torch.manual_seed(2)
    x = torch.randn(1, 3, 96, 160)
    ref["dense.input_96x160"] = x[0]
    with torch.no_grad():
        for mode, (mt, ir) in MODES.items():
            ref[f"dense.{mode}_96x160"] = dense_features(oc.visual, x, mt, ir)[0]
        x64 = torch.randn(1, 3, 64, 64)
        ref["dense.input_64x64"] = x64[0]
        ref["dense.clearclip_64x64"] = dense_features(oc.visual, x64, "ClearCLIP", True)[0]
        # A combination no named mode uses: k-k + neighbourhood (std 2), x + 0.5 * attn, FFN.
        ref["dense.knobs_kk_std2_alpha0.5_ffn_96x160"] = dense_features(
            oc.visual, x, "KK", ignore_residual=False, residual_alpha=0.5, neighbourhood_std=2.0)[0]

    # Half precision, as the official code runs on a GPU (`model.half()`), here
    # through PyTorch's CPU half kernels: every mode's dense features on the
    # same input, and the text tower's raw embeddings of a few prompts next to
    # their float32 values.
    oc_half = copy.deepcopy(oc).half()
    prompts = [f"a photo of a {name}." for name in text_names[:5]]
    meta["text_prompts"] = prompts
    tokens = open_clip.tokenize(prompts)
    with torch.no_grad():
        for mode, (mt, ir) in MODES.items():
            ref[f"dense_f16.{mode}_96x160"] = dense_features(oc_half.visual, x.half(), mt, ir)[0].float()
        ref["text.prompts"] = oc.encode_text(tokens)
        ref["text_f16.prompts"] = oc_half.encode_text(tokens).float()

    # PAMR alone, on a random guide image with a smooth edge and random masks.
    torch.manual_seed(3)
    guide = torch.randn(1, 3, 40, 56) * 0.3
    guide[:, :, :, 28:] += 2.0
    masks = torch.randn(1, 4, 40, 56)
    ref["pamr.guide"] = guide[0]
    ref["pamr.masks"] = masks[0]
    with torch.no_grad():
        ref["pamr.refined"] = pamr(guide, masks)[0]
        ref["pos_embed.28x42"] = interpolate_pos_encoding(oc.visual, 28 * 42 + 1, 448, 672)[0]

    # Whole pipeline on a real photo (scikit-image's "chelsea", CC0), 451x300.
    img = cv2.cvtColor(cv2.imread(os.path.join(out_dir, "chelsea.png")), cv2.COLOR_BGR2RGB)
    cases = {
        # name: (classes spec, settings)
        "default": ("cat;grass,lawn;wall;sky", dict()),
        "padded": ("background;cat,kitten;wall", dict(short_side=100, crop=72, stride=40, prob_thd=0.4)),
        "vanilla": ("cat;grass,lawn;wall;sky", dict(mode="vanilla", short_side=160, crop=112, stride=56)),
        "naclip_pamr": ("cat;grass,lawn;wall;sky", dict(mode="naclip", short_side=160, crop=112, stride=56,
                                                         pamr_steps=10)),
    }
    meta["pipeline"] = {}
    for name, (spec, settings) in cases.items():
        names, idx = split_classes(spec)
        q = class_embeddings(oc, names, OPENAI_IMAGENET_TEMPLATES)
        resized, probs, labels = segment(oc, img, q, idx, **settings)
        ref[f"pipeline.{name}.resized"] = torch.from_numpy(resized.copy())
        ref[f"pipeline.{name}.probs"] = probs
        ref[f"pipeline.{name}.labels"] = labels.to(torch.uint8)
        meta["pipeline"][name] = {"classes": spec, **settings}

    # Whole pipeline on a real JPEG photo larger than 448 on its short side, so
    # the resize is a downscale: scikit-image's "retina" (CC0, 1411x1411, 4:2:0),
    # read by cv2.imread as mmcv does. Its maps are stored every JPEG_STRIDE-th
    # pixel in each direction (full size would be 8 MB a class).
    jpeg_path = os.path.join(out_dir, "jpeg", "real_retina.jpg")
    jpeg_img = cv2.cvtColor(cv2.imread(jpeg_path), cv2.COLOR_BGR2RGB)
    meta["pipeline_jpeg"] = {"file": "jpeg/real_retina.jpg", "stride": JPEG_STRIDE, "cases": {}}
    for name, spec, settings in [("clearclip", "background;vessel,artery;disc;macula", dict()),
                                 ("vanilla", "background;vessel,artery;disc;macula", dict(mode="vanilla"))]:
        names, idx = split_classes(spec)
        q = class_embeddings(oc, names, OPENAI_IMAGENET_TEMPLATES)
        resized, probs, labels = segment(oc, jpeg_img, q, idx, **settings)
        ref[f"pipeline_jpeg.{name}.probs"] = probs[:, ::JPEG_STRIDE, ::JPEG_STRIDE].contiguous()
        ref[f"pipeline_jpeg.{name}.labels"] = labels[::JPEG_STRIDE, ::JPEG_STRIDE].to(torch.uint8).contiguous()
        meta["pipeline_jpeg"]["cases"][name] = {"classes": spec, "resized": list(resized.shape[:2]), **settings}

    save_file({k: x.detach().contiguous() for k, x in ref.items()},
              os.path.join(out_dir, "reference.safetensors"))
    with open(os.path.join(out_dir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    print(f"wrote fixtures to {out_dir}; HF vs open_clip max abs diff {layout_err:.2e}")


def generate_vit_b16(path):
    """A ViT-B/16-shaped random checkpoint (open_clip layout, f32) for benchmarks."""
    v = dict(width=768, layers=12, patch=16, image=224, mlp=3072)
    t = dict(width=512, layers=12, mlp=2048)
    hf = make_hf_model(v, t, 512, SEED)
    oc_sd = hf_to_openclip(hf.state_dict(), 12, 12)
    save_checkpoint(path, oc_sd, torch.float32)
    print(f"wrote {path}")


def load_openclip_checkpoint(path):
    """An open_clip-layout checkpoint as an open_clip CLIP model (float32), its sizes read from its shapes."""
    sd = safetensors.torch.load_file(path)
    vision, text, embed = openclip_config(sd)
    return make_openclip_model(vision, text, embed, {k: v.float() for k, v in sd.items()})


def openclip_config(sd):
    """The vision and text tower sizes of an open_clip-layout state dict, read from its shapes."""
    def layers(prefix):
        return 1 + max(int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix))

    width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = int(math.isqrt(sd["visual.positional_embedding"].shape[0] - 1))
    vision = dict(width=width, layers=layers("visual.transformer.resblocks."), patch=patch, image=grid * patch,
                  mlp=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    text = dict(width=sd["ln_final.weight"].shape[0], layers=layers("transformer.resblocks."),
                mlp=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    return vision, text, sd["text_projection"].shape[1]


class DenseEncoder(torch.nn.Module):
    """ClearCLIP's dense features for one square window of a fixed size, L2-normalised
    (`forward_feature` up to the cosine logits). The positional embeddings are resized
    once here, because tracing cannot follow `interpolate_pos_encoding`'s Python arithmetic."""

    def __init__(self, visual, window):
        super().__init__()
        self.visual = copy.deepcopy(visual)
        tokens = (window // visual.patch_size[0]) ** 2 + 1
        with torch.no_grad():
            pos = interpolate_pos_encoding(visual, tokens, window, window)[0]
        self.visual.positional_embedding = torch.nn.Parameter(pos.clone())

    def forward(self, pixels):
        f = dense_features(self.visual, pixels)
        return f / f.norm(dim=-1, keepdim=True)


def export_dense_onnx(checkpoint, out, window=448):
    """The ClearCLIP dense encoder of `checkpoint` (open_clip layout) as ONNX, input
    `pixels` [1, 3, window, window] (normalised), output `features` [1, patches, embed]."""
    model = load_openclip_checkpoint(checkpoint)
    dense = DenseEncoder(model.visual, window).eval()
    torch.manual_seed(2)
    pixels = torch.randn(1, 3, window, window)
    with torch.no_grad():
        expected = dense(pixels)
        # the reference path itself, with the embeddings resized on the fly: the wrapper changes nothing
        direct = dense_features(model.visual, pixels)
        direct = direct / direct.norm(dim=-1, keepdim=True)
    assert (expected - direct).abs().max().item() < 1e-5
    torch.onnx.export(dense, (pixels,), out, input_names=["pixels"], output_names=["features"],
                      opset_version=17, dynamo=False)
    try:
        import onnxruntime
    except ImportError:
        print(f"wrote {out} (not checked: onnxruntime is not installed)")
        return
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixels": pixels.numpy()})[0]
    err = float(np.abs(got - expected.numpy()).max())
    assert err < 1e-4, f"ONNX export disagrees with PyTorch: {err}"
    print(f"wrote {out}; onnxruntime vs PyTorch max abs diff {err:.2e}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", help="fixture directory, or checkpoint path with --vit-b16, or ONNX path with --dense-onnx")
    ap.add_argument("--vit-b16", action="store_true")
    ap.add_argument("--dense-onnx", metavar="CHECKPOINT", help="export CHECKPOINT's dense encoder to ONNX")
    a = ap.parse_args()
    if a.vit_b16:
        generate_vit_b16(a.out)
    elif a.dense_onnx:
        export_dense_onnx(a.dense_onnx, a.out)
    else:
        generate_fixtures(a.out)
