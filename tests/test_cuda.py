"""CUDA-only checks: attention with a past runs on a fused SDPA kernel, and bf16 matches the fp32 reference.

Skipped (and reported as skipped) on machines without a GPU, which includes CI.
"""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from model import GPT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def past_for(model, B, P):
    c = model.config
    shape = (B, c.n_head, P, c.head_dim)
    return [(torch.randn(shape, device="cuda", dtype=torch.bfloat16), torch.randn(shape, device="cuda", dtype=torch.bfloat16))
            for _ in range(c.n_layer)]


@pytest.mark.parametrize("with_mask", [False, True])
def test_fused_kernels_take_a_past(gpt2_ckpt, with_mask):
    """With the math fallback disabled, SDPA raises if no fused kernel accepts our inputs."""
    model = GPT.from_pretrained(gpt2_ckpt, dtype=torch.bfloat16).cuda()
    idx = torch.randint(0, 50257, (4, 64), device="cuda")
    past = past_for(model, 1, 5)
    mask = torch.ones(4, 69, device="cuda", dtype=torch.long) if with_mask else None
    with sdpa_kernel(FUSED):
        out = model(idx, past_kv=past, attention_mask=mask, targets=idx)
        out.loss.backward()
    assert torch.isfinite(out.logits).all()


def test_bf16_cuda_close_to_fp32_cpu(tiny_ckpt):
    cpu = GPT.from_pretrained(tiny_ckpt)
    gpu = GPT.from_pretrained(tiny_ckpt, dtype=torch.bfloat16).cuda()
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        want = cpu(idx).logits
        got = gpu(idx.cuda()).logits.float().cpu()
    assert (got - want).abs().max() < 0.05 * want.abs().max()
