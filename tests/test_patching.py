"""fastdeit.patch and the per-family functions on Hugging Face DeiT/ViT, timm-layout models and fastdeit's own
models: same outputs, same parameters under the same names (checkpoints keep working), clear errors."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdeit
from fastdeit.layers import Block
from tests.conftest import DEVICE
from tests.helpers import hf_config, small_model

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

# fp32 on both sides: the fused kernels accumulate in fp32 like torch, in another order (and tf32 on GPU).
ATOL = 1e-4 if DEVICE == "cpu" else 2e-2


def _hf(distilled: bool):
    model_cls = (
        transformers.DeiTForImageClassificationWithTeacher if distilled else transformers.ViTForImageClassification
    )
    cfg = hf_config(distilled, intermediate_size=128)
    return model_cls(cfg).eval().to(DEVICE)


@pytest.mark.parametrize("distilled", [True, False])
def test_patch_hf_same_logits_and_grads(distilled):
    torch.manual_seed(0)
    ref = _hf(distilled)
    model = copy.deepcopy(ref)
    names = {id(p): n for n, p in model.named_parameters()}  # patching reorders modules, not parameters
    fastdeit.patch(model, backend="triton")
    base = model.deit if distilled else model.vit
    assert all(isinstance(layer, Block) for layer in base.layers)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    out, expected = model(pixel_values=x).logits, ref(pixel_values=x).logits
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=ATOL)
    out.square().sum().backward()
    expected.square().sum().backward()
    ref_params = dict(ref.named_parameters())
    for p in model.parameters():
        name = names[id(p)]
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=10 * ATOL, rtol=10 * ATOL, msg=name)


@pytest.mark.parametrize("distilled", [True, False])
def test_patched_hf_model_refuses_layer_outputs_and_patches_again(distilled):
    # Before: hidden states and attention maps came back empty, silently (transformers records them from its own layer
    # classes); a second patch raised AttributeError ('Mlp' object has no attribute 'activation_fn').
    torch.manual_seed(0)
    ref = _hf(distilled)
    model = fastdeit.patch(copy.deepcopy(ref), backend="torch")
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    for flag in ("output_hidden_states", "output_attentions"):
        with pytest.raises(ValueError, match=f"cannot return {flag}"):
            model(pixel_values=x, **{flag: True})
    fastdeit.patch(model, backend="triton")  # again: only the backend changes
    base = model.deit if distilled else model.vit
    assert all(layer.attn.backend == "triton" for layer in base.layers)
    torch.testing.assert_close(model(pixel_values=x).logits, ref(pixel_values=x).logits, atol=ATOL, rtol=ATOL)
    model.config.output_hidden_states = True  # asked for through the config
    with pytest.raises(ValueError, match="cannot return output_hidden_states"):
        model(pixel_values=x)


def test_patch_shares_parameters_under_their_names():
    ref = _hf(True)
    before = {name: p for name, p in ref.named_parameters()}
    fastdeit.patch(ref, backend="torch")
    layer = ref.deit.layers[0]
    assert isinstance(layer, Block) and layer.attention is layer.attn
    assert layer.attention.q_proj.weight is before["deit.layers.0.attention.q_proj.weight"]
    assert layer.attn.qkv.weight.shape == (192, 64)
    after = dict(ref.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert list(ref.state_dict()) == list(before)  # the same keys, in transformers' order


@pytest.mark.parametrize("distilled", [True, False])
def test_patched_hf_model_saves_a_checkpoint_transformers_loads(tmp_path, distilled):
    """transformers' own save_pretrained on a patched model, loaded back by transformers into an unpatched one: the
    same logits (before, the patched keys were renamed, transformers re-initialised them, logits moved by ~0.3)."""
    torch.manual_seed(0)
    model = fastdeit.patch(_hf(distilled).cpu(), backend="torch")
    model.save_pretrained(tmp_path / "patched")
    reloaded = type(model).from_pretrained(tmp_path / "patched").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, model(pixel_values=x).logits, rtol=0, atol=1e-6)


def test_patch_keeps_eval_mode():
    """An eval model stays in eval mode: dropout (attention and hidden) stays off after patching."""
    torch.manual_seed(0)
    cfg = hf_config(True, intermediate_size=128, attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.5)
    ref = transformers.DeiTForImageClassificationWithTeacher(cfg).eval()
    model = fastdeit.patch(copy.deepcopy(ref), backend="torch")
    assert not any(m.training for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, ref(pixel_values=x).logits, atol=1e-5, rtol=1e-5)


def test_family_functions_and_dispatch():
    """patch() picks the family function by isinstance; each family function refuses another family's model."""
    vit = transformers.ViTForImageClassification(hf_config(False))
    assert fastdeit.patch(vit, backend="torch") is vit and isinstance(vit.vit.layers[0], Block)
    deit = transformers.DeiTModel(hf_config(True))
    assert fastdeit.patch_hf_deit(deit, backend="torch") is deit and isinstance(deit.layers[0], Block)
    with pytest.raises(TypeError, match="patch_hf_vit: expected a transformers vit model"):
        fastdeit.patch_hf_vit(transformers.DeiTForImageClassificationWithTeacher(hf_config(True)))
    model = small_model(backend="torch")
    assert fastdeit.patch_fastdeit(model, backend="triton") is model and model.backend == "triton"


def test_patch_fastdeit_model_switches_backend():
    model = small_model(backend="torch")
    fastdeit.patch(model, backend="triton")
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"triton"}


def test_patch_unknown_model_is_a_clear_error():
    with pytest.raises(TypeError, match="does not know torch.nn.modules.container.Sequential; supported models.*timm"):
        fastdeit.patch(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="backend must be one of"):
        fastdeit.patch(small_model(), backend="fast")


def test_patch_rejects_approximate_gelu():
    cfg = transformers.DeiTConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        hidden_act="gelu_new",
    )
    with pytest.raises(TypeError, match="hidden_act must be 'gelu'"):
        fastdeit.patch(transformers.DeiTModel(cfg))


# --- a model with timm's module layout (timm itself cannot be imported without torchvision) -------------
# The real timm is exercised by test_patch_real_timm where it is installed (the GPU machine).


class _TimmAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm, self.norm = nn.Identity(), nn.Identity(), nn.Identity()
        self.gate = None
        self.attn_drop, self.proj_drop = nn.Dropout(0.0), nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


class _TimmMlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(4 * dim, dim), nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class _TimmBlock(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _TimmAttention(dim, num_heads)
        self.ls1, self.drop_path1 = nn.Identity(), nn.Identity()
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _TimmMlp(dim)
        self.ls2, self.drop_path2 = nn.Identity(), nn.Identity()

    def forward(self, x):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class _TimmViT(nn.Module):
    def __init__(self, dim=64, depth=2, num_heads=2):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 8, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.Sequential(*[_TimmBlock(dim, num_heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


for _cls, _name in (
    (_TimmAttention, "Attention"),
    (_TimmMlp, "Mlp"),
    (_TimmBlock, "Block"),
    (_TimmViT, "VisionTransformer"),
):
    _cls.__name__ = _cls.__qualname__ = _name
    _cls.__module__ = "timm.models.vision_transformer"


def test_patch_timm_layout():
    torch.manual_seed(0)
    ref = _TimmViT().to(DEVICE).eval()
    model = fastdeit.patch_timm_vit(copy.deepcopy(ref), backend="triton")
    assert all(isinstance(b, Block) and b.fused and not b.training for b in model.blocks)
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    torch.testing.assert_close(model(x), ref(x), atol=ATOL, rtol=ATOL)
    assert fastdeit.patch_timm_vit(model, backend="torch") is model  # again: only the backend changes
    assert all(b.attn.backend == "torch" for b in model.blocks) and list(model.state_dict()) == list(ref.state_dict())
    torch.testing.assert_close(model(x), ref(x), atol=ATOL, rtol=ATOL)


def test_patch_dispatches_on_classes_not_names():
    """A look-alike of timm's class (same name and module string, not timm's class) is not taken for timm's."""
    with pytest.raises(TypeError, match="does not know timm.models.vision_transformer.VisionTransformer"):
        fastdeit.patch(_TimmViT())


def test_patch_timm_rejects_layer_scale():
    model = _TimmViT()
    model.blocks[1].ls1 = nn.Linear(64, 64)
    with pytest.raises(TypeError, match=r"blocks.1 is not a plain DeiT block.*\['ls1'\]"):
        fastdeit.patch_timm_vit(model)


def test_patch_real_timm():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).to(DEVICE).eval()
    model = fastdeit.patch(copy.deepcopy(ref), backend="triton" if DEVICE == "cuda" else "torch")
    x = torch.randn(2, 3, 224, 224, device=DEVICE)
    torch.testing.assert_close(model(x), ref(x), atol=ATOL, rtol=ATOL)
