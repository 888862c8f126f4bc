"""The 8 DeiT models: architecture, forward/backward, timm behaviour, bad input."""

import pytest
import torch

import fastdeit
from fastdeit.models import MODEL_CONFIGS
from tests.helpers import small_model

# Parameter counts of timm's models (timm's results tables), in millions, 2 decimals.
TIMM_PARAMS_M = {
    "deit_tiny_patch16_224": 5.72,
    "deit_small_patch16_224": 22.05,
    "deit_base_patch16_224": 86.57,
    "deit_base_patch16_384": 86.86,
    "deit_tiny_distilled_patch16_224": 5.91,
    "deit_small_distilled_patch16_224": 22.44,
    "deit_base_distilled_patch16_224": 87.34,
    "deit_base_distilled_patch16_384": 87.63,
}
# Forward GMACs of timm's models as timm publishes them: column infer_gmacs of pytorch-image-models'
# results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv.
TIMM_GMACS = {
    "deit_tiny_patch16_224": 1.26,
    "deit_small_patch16_224": 4.61,
    "deit_base_patch16_224": 17.58,
    "deit_base_patch16_384": 55.54,
    "deit_tiny_distilled_patch16_224": 1.27,
    "deit_small_distilled_patch16_224": 4.63,
    "deit_base_distilled_patch16_224": 17.68,
    "deit_base_distilled_patch16_384": 55.65,
}


def test_list_models():
    assert fastdeit.list_models() == sorted(TIMM_PARAMS_M)
    assert len(fastdeit.list_models()) == 8


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS_M))
def test_every_model_forward_backward(name):
    """Full-size model, batch 1: output shape, every parameter gets a finite gradient, timm's size."""
    model = fastdeit.create_model(name, backend="torch")
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 2) == TIMM_PARAMS_M[name]
    # Matmul MACs only; timm's counter also counts a few elementwise ops, so allow 1%.
    assert model.flops_per_image() / 2e9 == pytest.approx(TIMM_GMACS[name], rel=1e-2)
    assert model.pretrained_cfg["input_size"] == (3, *model.img_size)
    distilled = MODEL_CONFIGS[name]["distilled"]
    model.train()
    if distilled:
        model.set_distilled_training(True)
    x = torch.randn(1, 3, *model.img_size)
    out = model(x)
    outs = out if distilled else (out,)
    assert len(outs) == (2 if distilled else 1)
    loss = sum((o.float() ** 2).mean() for o in outs)
    assert all(o.shape == (1, 1000) and torch.isfinite(o).all() for o in outs)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


def test_distilled_eval_is_mean_of_heads():
    model = small_model(distilled=True)
    x = torch.randn(3, 3, 32, 32)
    model.train()
    model.set_distilled_training(True)
    torch.manual_seed(1)
    with torch.no_grad():
        cls, dist = model(x)
    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(out, (cls + dist) / 2)
    assert not torch.allclose(cls, dist)  # two different heads, so the mean is a real test
    torch.testing.assert_close(pre, (feats[:, 0] + feats[:, 1]) / 2)
    assert feats.shape == (3, 2 + 16, 64)


def test_distilled_training_off_returns_mean_in_train_mode():
    model = small_model(distilled=True).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_non_distilled_forward_head_pre_logits():
    model = small_model(distilled=False).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + 16, 64)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, 0])
    torch.testing.assert_close(model(x), model.head(feats[:, 0]))


def test_reset_classifier():
    model = small_model(distilled=True)
    model.reset_classifier(3)
    assert model.head.out_features == 3 and model.head_dist.out_features == 3
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        model.reset_classifier(-1)
    model.reset_classifier(5, "token")  # timm's signature (before: TypeError for the second argument)
    assert model.head.out_features == 5
    with pytest.raises(ValueError, match="global_pool: fastdeit's DeiT pools the class token"):
        model.reset_classifier(0, "avg")


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    model = small_model(distilled=False).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


def test_drop_path_is_stochastic_in_training_only():
    model = small_model(distilled=False, drop_path_rate=0.5)
    assert model.blocks[0].drop_path1.drop_prob == 0.0 and model.blocks[-1].drop_path1.drop_prob == 0.5
    x = torch.randn(8, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_dynamic_img_size_resamples_pos_embed():
    model = small_model(distilled=True, dynamic_img_size=True).eval()
    out = model(torch.randn(2, 3, 48, 40))
    assert out.shape == (2, 10)
    assert model.forward_features(torch.randn(1, 3, 48, 40)).shape == (1, 2 + 6 * 5, 64)


def test_other_backbones_through_layer_arguments():
    """Blocks take norm/attn/mlp layers; foreign layers (no residual argument) get plain adds."""
    from torch import nn

    model = small_model(distilled=False, norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6))
    ref = small_model(distilled=False)
    ref.load_state_dict(model.state_dict())
    assert not model.blocks[0].fused and ref.blocks[0].fused
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), ref.eval()(x))


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 3, 30, 32), "not a multiple of the patch size"),
        ((2, 1, 32, 32), "expected 3 input channels"),
        ((3, 32, 32), "4-D image batch"),
        ((2, 3, 48, 48), "expected images of size 32x32"),
    ],
)
def test_bad_input_shapes(shape, match):
    model = small_model()
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape))


def test_bad_configs():
    with pytest.raises(ValueError, match="needs a distilled model"):
        small_model(distilled=False).set_distilled_training(True)
    with pytest.raises(ValueError, match="unknown model 'deit_tiny'.*did you mean"):
        fastdeit.create_model("deit_tiny")
    with pytest.raises(ValueError, match="backend must be one of"):
        fastdeit.create_model("deit_tiny_patch16_224", backend="cuda")
    with pytest.raises(ValueError, match="img_size must be a multiple of patch_size"):
        fastdeit.create_model("deit_tiny_patch16_224", img_size=100)
    with pytest.raises(ValueError, match="unknown arguments"):
        fastdeit.create_model("deit_tiny_patch16_224", embed_dimm=10)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        fastdeit.create_model("deit_tiny_patch16_224", embed_dim=100, num_heads=3)


def test_triton_backend_on_plain_cpu_is_a_clear_error(monkeypatch):
    # Built (the kernels imported) before the interpreter is switched off: triton.jit reads TRITON_INTERPRET when a
    # kernel is defined, and kernels defined without it would fail every later test on a CPU.
    model = small_model(backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        model(torch.randn(1, 3, 32, 32))


def test_create_on_meta_device():
    """Building under a meta-device context allocates nothing (used to size models before materialising)."""
    with torch.device("meta"):
        model = fastdeit.create_model("deit_base_patch16_224", backend="torch", drop_path_rate=0.1)
    assert model.cls_token.is_meta
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


# --- the model records what it is -------------------------------------------------------------------------------


def test_model_records_its_config_in_the_constructor():
    """Built directly (no registry), timm-style or from a config: model.config is the whole story."""
    model = fastdeit.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=3)
    assert model.config == fastdeit.VisionTransformerConfig(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=3
    )
    assert model.model_name == "VisionTransformer" and model.pretrained_cfg["input_size"] == (3, 32, 32)
    again = fastdeit.VisionTransformer.from_config(model.config)
    assert again.config == model.config and again.state_dict().keys() == model.state_dict().keys()
    named = small_model(class_names=["a"] * 10)
    assert named.config.name == "deit_tiny_distilled_patch16_224" and named.class_names == ("a",) * 10
    named.reset_classifier(3)
    assert named.config.num_classes == 3 and named.class_names is None  # a new head: its classes are unknown
    with pytest.raises(ValueError, match="2 class names for a model with 3 classes"):
        named.set_class_names(["x", "y"])
    with pytest.raises(ValueError, match=r"unknown arguments \['embed_dimm'\]"):
        fastdeit.VisionTransformer(embed_dimm=3)


def test_forward_goes_through_patch_embed_forward():
    """Hooks and subclasses of the patch embedding see the call (deit.py used to call proj directly)."""
    model = small_model().eval()
    calls = []
    model.patch_embed.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    model(torch.randn(2, 3, 32, 32))
    assert calls == [(2, 16, 64)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layer_norm_eps_reaches_every_layer_norm(backend):
    """eps 1e-12 (Hugging Face's DeiT) on every LayerNorm, the fused Triton one included: on tokens of variance
    ~1e-10, eps 1e-6 would shrink the normalised values ~100x."""
    torch.manual_seed(0)
    model = small_model(distilled=False, layer_norm_eps=1e-12, backend=backend).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 5 and {m.eps for m in norms} == {1e-12}
    x = torch.randn(2, 17, 64) * 1e-5
    expected = torch.nn.functional.layer_norm(x, (64,), model.norm.weight, model.norm.bias, 1e-12)
    torch.testing.assert_close(model.norm(x), expected, rtol=1e-4, atol=1e-4)
    assert (model.norm(x) - torch.nn.functional.layer_norm(x, (64,), eps=1e-6)).abs().max() > 0.5


def test_wrong_input_dtype_is_a_clear_error():
    """Before: 'Input type (unsigned char) and bias type (float) should be the same' from the convolution."""
    model = small_model().eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"expected a torch.float32 image batch .* got torch.uint8: .*/ 255, then "
                       r"normalise them with the model's mean \(0.485, 0.456, 0.406\)"):  # fmt: skip
        model(images)
    with pytest.raises(TypeError, match=r"got torch.bfloat16: cast it with x.to\(torch.float32\)"):
        model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed dtypes are what autocast is for
        assert model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).shape == (2, 10)
        with pytest.raises(TypeError, match="got torch.uint8"):
            model(images)
