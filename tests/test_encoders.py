"""Encoders, SAME padding, tokenizers and initialisers of dqn_moe_atari.py."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dqn_moe_atari as dqn

TRUNC2_STD = 0.87962566103423978  # std of a unit normal truncated at +-2


def encoder(kind, **kw):
    return nn.Sequential(*dqn.encoder_stages(kind, **kw))


def tf_same_pads(size, kernel, stride):
    """TensorFlow's documented SAME rule (an independent formulation of the padding)."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


# ------------------------------------------------------------------------------------------
# tokenizers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, channels, d", [("impala", (16, 32, 32), 32), ("nature", None, 64)])
def test_encoder_output_and_token_shapes(kind, channels, d):
    """Default encoders map 4x84x84 to 11x11xd; conv/feat/samp tokens have the paper's shapes
    and `token_shape` agrees with `tokenize`."""
    torch.manual_seed(0)
    kw = {"impala_channels": channels} if channels else {}
    with torch.no_grad():
        feats = encoder(kind, **kw)(torch.rand(2, 4, 84, 84))
    assert feats.shape == (2, d, 11, 11)
    expected = {"conv": (121, d), "feat": (d, 121), "samp": (1, 121 * d)}
    for tok, shape in expected.items():
        assert dqn.tokenize(feats, tok).shape == (2, *shape)
        assert dqn.token_shape(tuple(feats.shape[1:]), tok) == shape


def test_token_shape_matches_tokenize_on_odd_map():
    """`token_shape` equals the shape `tokenize` returns for a non-square feature map."""
    f = torch.randn(3, 5, 4, 7)
    for tok in ("conv", "feat", "samp"):
        assert tuple(dqn.tokenize(f, tok).shape[1:]) == dqn.token_shape((5, 4, 7), tok)


def test_token_ordering():
    """PerConv token i*w+j is the channel vector at (i, j); PerFeat token c is channel c's map
    row-major; PerSamp flattens in (h, w, d) order."""
    torch.manual_seed(0)
    b, d, h, w = 2, 3, 4, 5
    f = torch.randn(b, d, h, w)
    conv, feat, samp = (dqn.tokenize(f, k) for k in ("conv", "feat", "samp"))
    for i in range(h):
        for j in range(w):
            assert torch.equal(conv[:, i * w + j], f[:, :, i, j])
            for c in range(d):
                assert torch.equal(feat[:, c, i * w + j], f[:, c, i, j])
                assert torch.equal(samp[:, 0, (i * w + j) * d + c], f[:, c, i, j])


def test_unknown_tokenizer_raises():
    with pytest.raises(ValueError):
        dqn.tokenize(torch.zeros(1, 2, 3, 3), "pixel")


# ------------------------------------------------------------------------------------------
# SAME padding
# ------------------------------------------------------------------------------------------
def test_same_padding_values():
    """Padding of the Nature CNN's first conv and of an odd-size stride-2 case (asymmetric)."""
    assert dqn.same_padding(84, 8, 4) == (2, 2)
    assert dqn.same_padding(21, 4, 2) == (1, 2)
    assert dqn.same_padding(11, 3, 1) == (1, 1)
    assert dqn.same_padding(11, 4, 1) == (1, 2)
    assert dqn.same_padding(11, 6, 1) == (2, 3)
    for size in range(1, 30):
        for k in range(1, 9):
            for s in range(1, 5):
                assert dqn.same_padding(size, k, s) == tf_same_pads(size, k, s), (size, k, s)


def test_max_pool_same_sizes_and_values():
    """SAME max-pool 3x3/2 gives 84->42->21->11 and equals a brute-force window max that
    ignores the padding (padding never wins, even for negative inputs)."""
    x = torch.zeros(1, 1, 84, 84)
    sizes = []
    for _ in range(3):
        x = dqn.max_pool_same(x)
        sizes.append(x.shape[-1])
    assert sizes == [42, 21, 11]

    torch.manual_seed(0)
    for size in (5, 6, 7, 21):
        x = -torch.rand(2, 3, size, size) - 1.0  # all negative
        y = dqn.max_pool_same(x)
        out = -(-size // 2)
        before, _ = tf_same_pads(size, 3, 2)
        assert y.shape == (2, 3, out, out)
        for i in range(out):
            for j in range(out):
                r0, c0 = i * 2 - before, j * 2 - before
                win = x[:, :, max(r0, 0):r0 + 3, max(c0, 0):c0 + 3]
                assert torch.equal(y[:, :, i, j], win.amax(dim=(-2, -1)))


@pytest.mark.parametrize("h, w, k, s", [(21, 21, 4, 2), (21, 20, 4, 2), (11, 11, 4, 1), (11, 11, 6, 1),
                                        (84, 84, 8, 4), (13, 9, 3, 2)])
def test_same_conv_matches_tf_reference(h, w, k, s):
    """SameConv2d equals F.conv2d on an input padded by hand with TensorFlow's SAME rule
    (asymmetric pads included, height and width padded independently)."""
    torch.manual_seed(0)
    conv = dqn.SameConv2d(3, 5, k, s)
    with torch.no_grad():
        conv.bias.normal_()
        x = torch.randn(2, 3, h, w)
        (t, b), (l, r) = tf_same_pads(h, k, s), tf_same_pads(w, k, s)
        ref = F.conv2d(F.pad(x, (l, r, t, b)), conv.weight, conv.bias, stride=s)
        y = conv(x)
    assert y.shape == (2, 5, -(-h // s), -(-w // s))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)  # conv algorithms may differ in the last bits


@pytest.mark.parametrize("filter_size", [3, 4, 6])
def test_impala_filter_sizes_keep_11x11(filter_size):
    """Appendix D filter sizes 3, 4, 6 all give an 11x11 feature map from 84x84 frames."""
    with torch.no_grad():
        y = encoder("impala", impala_channels=(2, 4, 4), filter_size=filter_size)(torch.rand(1, 4, 84, 84))
    assert y.shape == (1, 4, 11, 11)


def test_impala_ends_with_relu_nature_relu_each_layer():
    """Impala applies a ReLU after its last stack; Nature's conv layers all end with ReLU."""
    torch.manual_seed(0)
    x = torch.rand(2, 4, 84, 84)
    with torch.no_grad():
        for kind, kw in (("impala", {"impala_channels": (2, 4, 4)}), ("nature", {})):
            enc = encoder(kind, **kw)
            for stage in enc:  # make the stages produce negative values before any ReLU
                for m in stage.modules():
                    if isinstance(m, nn.Conv2d):
                        m.bias.fill_(-0.1)
            assert enc(x).min() >= 0


# ------------------------------------------------------------------------------------------
# initialisers
# ------------------------------------------------------------------------------------------
def assert_xavier(weight, fan_in, fan_out):
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    w = weight.detach()
    assert w.abs().max() <= bound + 1e-7
    if w.numel() >= 2000:  # uniform(-b, b) has std b / sqrt(3)
        assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.06


def assert_lecun(weight, fan_in):
    std = math.sqrt(1.0 / fan_in) / TRUNC2_STD
    w = weight.detach()
    assert w.abs().max() <= 2 * std + 1e-7
    if w.numel() >= 2000:  # truncation rescaled so the std is 1/sqrt(fan_in)
        assert abs(w.std().item() * math.sqrt(fan_in) - 1) < 0.06


def test_conv_and_dense_init_xavier_zero_bias():
    """Encoder convs (Nature, Impala stack convs) and dense layers (baseline, head) use Glorot
    uniform with fan_in/fan_out = channels * k * k; biases are zero."""
    torch.manual_seed(0)
    nature = encoder("nature")
    for conv, (cin, cout, k) in zip(nature, [(4, 32, 8), (32, 64, 4), (64, 64, 3)]):
        assert_xavier(conv.weight, cin * k * k, cout * k * k)
        assert torch.all(conv.bias == 0)
    impala = encoder("impala")
    for stack, (cin, cout) in zip(impala, [(4, 16), (16, 32), (32, 32)]):
        assert_xavier(stack.conv.weight, cin * 9, cout * 9)
        assert torch.all(stack.conv.bias == 0)
    args = dqn.Args(impala_channels=(4, 8, 8), moe="none", expert_hidden=64)
    net = dqn.QNetwork(args, num_actions=6)
    assert_xavier(net.torso.moe.dense.weight, 121 * 8, 64)
    assert torch.all(net.torso.moe.dense.bias == 0)
    assert_xavier(net.head.weight, 64, 6)
    assert torch.all(net.head.bias == 0)


def test_expert_init_xavier_per_expert():
    """Expert kernels are Glorot uniform with one expert's fan_in/fan_out; biases zero."""
    torch.manual_seed(0)
    ex = dqn.ExpertMLPs(4, 32, 64, 32)
    for e in range(4):
        assert_xavier(ex.w1[e], 32, 64)
        assert_xavier(ex.w2[e], 64, 32)
    assert torch.all(ex.b1 == 0) and torch.all(ex.b2 == 0)


def test_residual_convs_lecun_truncated_normal():
    """Impala residual convs use lecun_normal: truncated at 2 std, std = 1/sqrt(fan_in) after
    rescaling by 0.8796; biases zero."""
    torch.manual_seed(0)
    impala = encoder("impala")
    for stack, c in zip(impala, [16, 32, 32]):
        for block in stack.blocks:
            for conv in (block.conv0, block.conv1):
                assert_lecun(conv.weight, c * 9)
                assert torch.all(conv.bias == 0)
    big = dqn.SameConv2d(64, 64, 3, init="lecun")
    assert_lecun(big.weight, 64 * 9)
    assert big.weight.abs().max() > 1.8 * math.sqrt(1 / (64 * 9)) / TRUNC2_STD  # truncation is at 2 std, not tighter


def test_preprocess_scales_uint8():
    """uint8 0..255 -> float 0..1."""
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(dqn.preprocess(x), torch.tensor([0.0, 0.2, 1.0]))
