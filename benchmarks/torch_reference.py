"""PyTorch reference networks in the torchvision key layout, written for the parity tests.

torchvision itself is not importable beside the CPU torch wheel on these machines, so the
two architectures are spelled out here with torchvision's module names and semantics.
"""

import torch
from torch import nn


class TorchBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(out + idt)


class TorchResNet18(nn.Module):
    def __init__(self, num_classes=7, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        cin = width
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}",
                    nn.Sequential(TorchBasicBlock(cin, w, stride), TorchBasicBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _shuffle(x, groups):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class TorchInvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        main_in = cin if stride > 1 else half
        self.branch2 = nn.Sequential(
            nn.Conv2d(main_in, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return _shuffle(out, 2)


class TorchShuffleNetV2(nn.Module):
    def __init__(self, channels=(116, 232, 464, 1024), num_classes=7, stem=24):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = stem
        for name, cout, reps in zip(("stage2", "stage3", "stage4"), channels[:3], (4, 8, 4)):
            units = [TorchInvertedResidual(cin, cout, 2)]
            units += [TorchInvertedResidual(cout, cout, 1) for _ in range(reps - 1)]
            setattr(self, name, nn.Sequential(*units))
            cin = cout
        self.conv5 = nn.Sequential(nn.Conv2d(cin, channels[3], 1, bias=False),
                                   nn.BatchNorm2d(channels[3]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(channels[3], num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine and running statistics, so the parity test can catch a swap."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


# ---------------------------------------------------------------------------------------
# The PyTorch way of the four presets, for the speed comparison (benchmarks/train_step.py):
# the same architectures, losses and optimizer as ferjax, written as research code would.

import torch.nn.functional as F  # noqa: E402


class TorchCBAM(nn.Module):
    def __init__(self, c, r=16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c))
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1, momentum=0.01)

    def forward(self, x):
        s = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        x = x * torch.sigmoid(s)[:, :, None, None]
        q = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.bn(self.conv(q)))


class TorchCBAMBlock(TorchBasicBlock):
    def __init__(self, cin, cout, stride):
        super().__init__(cin, cout, stride)
        self.cbam = TorchCBAM(cout)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.cbam(self.bn2(self.conv2(out)))
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(out + idt)


class TorchTrunk18(TorchResNet18):
    """ResNet-18 without pooling/fc: returns the last feature map."""

    def __init__(self, cbam=False, width=64):
        super().__init__(width=width)
        if cbam:
            widths = [width, 2 * width, 4 * width, 8 * width]
            cin = width
            for i, w in enumerate(widths):
                stride = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", nn.Sequential(TorchCBAMBlock(cin, w, stride),
                                                             TorchCBAMBlock(w, w, 1)))
                cin = w
        del self.fc

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TorchRUL(nn.Module):
    """RUL on a CBAM ResNet-18 (the official RUL head layout)."""

    def __init__(self, num_classes=7, spatial=7, dim=64):
        super().__init__()
        self.trunk = TorchTrunk18(cbam=True)

        def branch():
            return nn.Sequential(nn.BatchNorm2d(512, eps=2e-5, affine=False), nn.Dropout(0.4),
                                 nn.Flatten(), nn.Linear(512 * spatial * spatial, dim),
                                 nn.BatchNorm1d(dim, eps=2e-5))

        self.mu, self.logvar = branch(), branch()
        self.fc = nn.Linear(dim, num_classes)

    def loss(self, x, y, weights):
        f = self.trunk(x)
        mu, u = self.mu(f), self.logvar(f).exp().mean(1)
        perm = torch.randperm(x.shape[0], device=x.device)
        lam = u / (u + u[perm])
        z = self.fc(lam[:, None] * mu + (1 - lam)[:, None] * mu[perm])
        return 0.5 * F.cross_entropy(z, y, weight=weights) + \
            0.5 * F.cross_entropy(z, y[perm], weight=weights)


class TorchMEK(nn.Module):
    """ResNet-18 with CAMs of the image and its mirror; RSL + λ·RAC."""

    def __init__(self, num_classes=7):
        super().__init__()
        self.trunk = TorchTrunk18()
        self.fc = nn.Linear(512, num_classes)

    def loss(self, x, y, rsl_table, weights, lam=0.1, separate=False):
        n = x.shape[0]
        if separate:  # two passes, BN statistics per view (the reference code's way)
            f = torch.cat([self.trunk(x), self.trunk(x.flip(3))])
        else:
            f = self.trunk(torch.cat([x, x.flip(3)]))
        z = self.fc(f[:n].mean((2, 3)))
        cam = torch.einsum("nchw,kc->nkhw", f, self.fc.weight.detach())
        rac = ((cam[:n] - cam[n:].flip(3)) ** 2).mean((2, 3)) @ weights
        rsl = -(rsl_table[y] * F.log_softmax(z, 1)).sum(1).mean()
        return rsl + lam * rac.mean()


def beta_mish(x, beta=1.5):
    return x * torch.tanh(beta * F.softplus(x))


class BetaMish(nn.Module):
    def forward(self, x):
        return beta_mish(x)


class TorchClipUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride, half = stride, cout // 2
        main_in = cin if stride > 1 else half
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 5, stride, 2, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), BetaMish())
        self.branch2 = nn.Sequential(
            nn.Conv2d(main_in, main_in, 5, stride, 2, groups=main_in, bias=False),
            nn.BatchNorm2d(main_in), nn.Conv2d(main_in, half, 1, bias=False),
            nn.BatchNorm2d(half), BetaMish())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, 1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return _shuffle(out, 2)


class TorchSA(nn.Module):
    def __init__(self, c, groups=8):
        super().__init__()
        self.g, h = groups, c // (2 * groups)
        self.cw, self.cb = nn.Parameter(torch.zeros(1, h, 1, 1)), nn.Parameter(torch.ones(1, h, 1, 1))
        self.sw, self.sb = nn.Parameter(torch.zeros(1, h, 1, 1)), nn.Parameter(torch.ones(1, h, 1, 1))
        self.gn = nn.GroupNorm(h, h)

    def forward(self, x):
        b, c, hh, ww = x.shape
        x = x.reshape(b * self.g, -1, hh, ww)
        x0, x1 = x.chunk(2, 1)
        x0 = x0 * torch.sigmoid(self.cw * x0.mean((2, 3), keepdim=True) + self.cb)
        x1 = x1 * torch.sigmoid(self.sw * self.gn(x1) + self.sb)
        return _shuffle(torch.cat([x0, x1], 1).reshape(b, c, hh, ww), 2)


class TorchRLRCNet(nn.Module):
    """Clip_K5 ShuffleNetV2 trunk, two stage-4 branch units, shared conv5, BBN fusion."""

    def __init__(self, num_classes=7, channels=(116, 232, 464, 1024)):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24),
                                   BetaMish())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 24
        for cout, reps in zip(channels[:3], (4, 8, 3)):
            layers += [TorchClipUnit(cin, cout, 2)] + [TorchClipUnit(cout, cout, 1)
                                                       for _ in range(reps - 1)]
            cin = cout
        self.trunk = nn.Sequential(*layers)
        self.unit_c, self.unit_r = TorchClipUnit(cin, cin, 1), TorchClipUnit(cin, cin, 1)
        self.sa = TorchSA(cin)
        self.conv5 = nn.Sequential(nn.Conv2d(cin, channels[3], 1, bias=False),
                                   nn.BatchNorm2d(channels[3]), BetaMish())
        self.fc = nn.Linear(2 * channels[3], num_classes)

    def loss(self, xc, yc, xr, yr, alpha):
        h = self.trunk(self.maxpool(self.conv1(torch.cat([xc, xr]))))
        hc, hr = h.chunk(2)
        fc = self.conv5(self.sa(self.unit_c(hc))).mean((2, 3))
        fr = self.conv5(self.unit_r(hr)).mean((2, 3))
        z = self.fc(2 * torch.cat([alpha * fc, (1 - alpha) * fr], 1))
        return alpha * F.cross_entropy(z, yc) + (1 - alpha) * F.cross_entropy(z, yr)


class TorchBaseline(nn.Module):
    def __init__(self, num_classes=7):
        super().__init__()
        self.net = TorchResNet18(num_classes)

    def loss(self, x, y):
        return F.cross_entropy(self.net(x), y)


class TorchSwinBlock(nn.Module):
    """Swin block on (B, H, W, C) tokens; module names as in the Swin reference code."""

    def __init__(self, dim, heads, size, window, shift):
        super().__init__()
        self.window, self.shift = min(window, size), (0 if size <= window else shift)
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        w = self.window
        self.attn.relative_position_bias_table = nn.Parameter(
            0.02 * torch.randn((2 * w - 1) ** 2, heads))
        ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        self.register_buffer("index", (ys[:, None] - ys[None] + w - 1) * (2 * w - 1)
                             + xs[:, None] - xs[None] + w - 1, persistent=False)
        region = torch.zeros(size, size)
        if self.shift:
            cuts = [0, size - w, size - self.shift, size]
            for i in range(3):
                for j in range(3):
                    region[cuts[i]:cuts[i + 1], cuts[j]:cuts[j + 1]] = 3 * i + j
        region = self._windows(region[None, :, :, None])[..., 0]  # (nW, w²)
        self.register_buffer("mask", (region[:, :, None] != region[:, None]).float() * -100,
                             persistent=False)
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = (nn.Linear(dim, 4 * dim), nn.GELU(),
                                                    nn.Linear(4 * dim, dim))

    def _windows(self, x):
        b, h, wd, c = x.shape
        w = self.window
        return x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)

    def forward(self, x):
        b, h, wd, c = x.shape
        w, s = self.window, self.shift
        y = torch.roll(self.norm1(x), (-s, -s), (1, 2))
        t = self._windows(y)
        qkv = self.attn.qkv(t).view(t.shape[0], w * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5
        scores = scores + self.attn.relative_position_bias_table[self.index].permute(2, 0, 1)
        n_w = self.mask.shape[0]
        scores = scores.view(b, n_w, self.heads, w * w, w * w) + self.mask[None, :, None]
        out = (scores.view(-1, self.heads, w * w, w * w).softmax(-1) @ v)
        out = self.attn.proj(out.transpose(1, 2).reshape(-1, w * w, c))
        out = out.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)
        x = x + torch.roll(out, (s, s), (1, 2))
        return x + self.mlp(self.norm2(x))


class TorchSwin(nn.Module):
    """MEK's Swin-T trunk plus its extra LayerNorm (`norm`) and a linear classifier
    (`fc`, the name ferjax's linear head imports from); returns logits."""

    def __init__(self, num_classes=7, image_size=112, patch=2, dim=96, depths=(2, 2, 6, 2),
                 heads=(3, 6, 12, 24), window=7):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.patch_embed.norm = nn.LayerNorm(dim)
        size = image_size // patch
        self.layers = nn.ModuleList()
        for i, (depth, n_heads) in enumerate(zip(depths, heads)):
            stage = nn.Module()
            stage.blocks = nn.ModuleList(TorchSwinBlock(dim, n_heads, size, window,
                                                        (j % 2) * (window // 2))
                                         for j in range(depth))
            if i < len(depths) - 1:
                stage.downsample = nn.Module()
                stage.downsample.norm = nn.LayerNorm(4 * dim)
                stage.downsample.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
                dim, size = 2 * dim, size // 2
            self.layers.append(stage)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def features(self, x):
        x = self.patch_embed.norm(self.patch_embed.proj(x).permute(0, 2, 3, 1))
        for stage in self.layers:
            for block in stage.blocks:
                x = block(x)
            if hasattr(stage, "downsample"):
                x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                               x[:, 1::2, 1::2]], -1)
                x = stage.downsample.reduction(stage.downsample.norm(x))
        return self.norm(x)  # (N, h, w, C)

    def forward(self, x):
        return self.fc(self.features(x).mean((1, 2)))


class TorchMEKSwin(nn.Module):
    """MEK's Swin-T recipe: CAMs from the 7x7 map after the extra LayerNorm; RSL + λ·RAC.
    LayerNorm only, so the image and its mirror go through as one 2N batch."""

    def __init__(self, num_classes=7, image_size=112):
        super().__init__()
        self.swin = TorchSwin(num_classes, image_size)

    def loss(self, x, y, rsl_table, weights, lam=0.1):
        n = x.shape[0]
        f = self.swin.features(torch.cat([x, x.flip(3)]))  # (2N, h, w, C)
        z = self.swin.fc(f[:n].mean((1, 2)))
        cam = torch.einsum("nhwc,kc->nkhw", f, self.swin.fc.weight.detach())
        rac = ((cam[:n] - cam[n:].flip(3)) ** 2).mean((2, 3)) @ weights
        rsl = -(rsl_table[y] * F.log_softmax(z, 1)).sum(1).mean()
        return rsl + lam * rac.mean()
