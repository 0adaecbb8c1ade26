"""Compiling PyTorch DenseNets: compared with PyTorch's eval forward (needs torch)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
tv_models = pytest.importorskip("torchvision.models", reason="torchvision is not installed")
nn = torch.nn

import densenetc  # noqa: E402


def randomize(net, seed=0):
    """Random weights and random BatchNorm statistics (so BN folding is exercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


def cifar_bc(growth=12, blocks=(4, 4, 4), classes=10):
    """A small CIFAR DenseNet-BC from torchvision's DenseNet class (3x3/1 stem conv only)."""
    net = tv_models.DenseNet(growth_rate=growth, block_config=blocks,
                             num_init_features=2 * growth, bn_size=4, num_classes=classes)
    net.features.conv0 = nn.Conv2d(3, 2 * growth, 3, 1, 1, bias=False)
    del net.features.norm0, net.features.relu0, net.features.pool0
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.1)
    return randomize(net, 1)


def close(actual, expected, rel=1e-4):
    expected = np.asarray(expected)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale)


@pytest.fixture(scope="module")
def small():
    return cifar_bc()


def test_cifar_bc_matches_pytorch(small):
    m = densenetc.compile(small, batch=3, threads=2)
    assert m.input_shape == (3, 3, 32, 32) and m.output_shape == (3, 10)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = small(x).numpy()
    close(m(x.numpy()), ref)
    # torch in, torch out; the tensor's buffer is used in place.
    y = m(x)
    assert isinstance(y, torch.Tensor)
    assert m.last_input_address == x.data_ptr()
    close(y.numpy(), ref)
    # Non-contiguous tensor.
    xt = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not xt.is_contiguous()
    close(m(xt).numpy(), ref)


def test_densenet121_matches_pytorch():
    net = randomize(tv_models.densenet121(weights=None), 3)
    stages = []
    m = densenetc.compile(net, batch=2, progress=lambda s, msg: stages.append(s))
    assert "codegen" in stages
    assert m.output_shape == (2, 1000)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = net(x).numpy()
    close(m(x), ref)


@pytest.mark.parametrize("post", ["softmax", "sigmoid"])
def test_sequential_head(small, post):
    act = nn.Softmax(dim=1) if post == "softmax" else nn.Sigmoid()
    seq = nn.Sequential(small, act).eval()
    m = densenetc.compile(seq)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = seq(x).numpy()
    close(m(x).numpy(), ref)


def test_state_dict_and_checkpoint(small, tmp_path):
    arch = {"arch": "densenet-bc-100", "block_config": [4, 4, 4]}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = small(x).numpy()
    m = densenetc.compile({"module." + k: v for k, v in small.state_dict().items()}, arch=arch)
    close(m(x.numpy()), ref)
    path = tmp_path / "small.pth"
    torch.save(small.state_dict(), path)
    m2 = densenetc.compile(str(path), arch=arch)
    close(m2(x.numpy()), ref)
    # And back through an artefact.
    m2.save(tmp_path / "small.dnc")
    close(densenetc.load(tmp_path / "small.dnc")(x.numpy()), ref)


def test_unrecognised_modules(small):
    with pytest.raises(ValueError, match="`0`"):
        densenetc.compile(nn.Sequential(nn.Conv2d(3, 3, 1), small))
    with pytest.raises(ValueError, match="`1`"):
        densenetc.compile(nn.Sequential(small, nn.ReLU()))
    with pytest.raises(ValueError, match="exactly one DenseNet"):
        densenetc.compile(nn.Sequential(small, cifar_bc()))
    odd = cifar_bc()
    odd.features.denseblock1.denselayer1.extra = nn.Dropout()
    with pytest.raises(ValueError, match="features.denseblock1.denselayer1.extra"):
        densenetc.compile(odd)
    with pytest.raises(NotImplementedError):
        densenetc.compile(small, head="gelu")


def test_chexnet_style_classifier(small):
    """A classifier Sequential(Linear, Sigmoid), as CheXNet's: the sigmoid becomes the head."""
    import copy

    net = copy.deepcopy(small)
    net.classifier = nn.Sequential(net.classifier, nn.Sigmoid())
    net.eval()
    m = densenetc.compile(net)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = net(x).numpy()
    close(m(x).numpy(), ref)


def test_torchxrayvision_like_op_norm(small):
    """A DenseNet carrying `op_threshs` (torchxrayvision): sigmoid + operating-point norm."""
    import copy

    class XrvLike(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.features = net.features
            self.classifier = net.classifier
            self.register_buffer("op_threshs", torch.rand(10) * 0.5 + 0.25)

        def forward(self, x):
            out = torch.relu(self.features(x))
            out = torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)
            out = torch.sigmoid(self.classifier(out))
            t = self.op_threshs
            return torch.where(out < t, out / (t * 2), 1 - ((1 - out) / ((1 - t) * 2)))

    net = XrvLike(copy.deepcopy(small)).eval()
    m = densenetc.compile(net)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = net(x).numpy()
    close(m(x).numpy(), ref)


def test_odd_widths_compression():
    """Growth 6, odd transition inputs: compression recovered so floor(C * θ) matches."""
    net = tv_models.DenseNet(growth_rate=6, block_config=(3, 3), num_init_features=13,
                             bn_size=2, num_classes=5)
    net.features.conv0 = nn.Conv2d(3, 13, 3, 1, 1, bias=False)
    del net.features.norm0, net.features.relu0, net.features.pool0
    net = randomize(net, 5)
    m = densenetc.compile(net, image_size=16)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref = net(x).numpy()
    close(m(x).numpy(), ref)
