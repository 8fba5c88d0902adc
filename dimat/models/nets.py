"""The built-in models: mlp, cnn, vgg11/16, resnet20 — plain, torch.fx-traceable modules."""

from __future__ import annotations

from torch import nn

from dimat.models.layers import norm_layer


class MLP(nn.Sequential):
    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int):
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(in_features, h), nn.ReLU()]
            in_features = h
        layers.append(nn.Linear(in_features, num_classes))
        super().__init__(*layers)


def _conv_block(c_in: int, c_out: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"), norm_layer(norm, c_out), nn.ReLU()]


class CNN(nn.Sequential):
    """conv(32w)-norm-relu-pool → conv(64w)-norm-relu-pool → fc(128w) → fc."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 1, norm: str = "bn"):
        c, h, w = input_shape
        c1, c2, f = 32 * width, 64 * width, 128 * width
        super().__init__(
            *_conv_block(c, c1, norm), nn.MaxPool2d(2),
            *_conv_block(c1, c2, norm), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), f), nn.ReLU(), nn.Linear(f, num_classes),
        )


VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with channels = standard × width / 8 (width=8 is the original); pools only while space remains."""

    def __init__(self, name: str, input_shape: tuple[int, ...], num_classes: int, width: int = 1, norm: str = "bn"):
        super().__init__()
        c, size = input_shape[0], min(input_shape[1:])
        layers: list[nn.Module] = []
        for v in VGG_CFG[name]:
            if v == "M":
                if size > 1:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out = max(4, round(v * width / 8))
            layers += _conv_block(c, out, norm)
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # convolutional shortcut where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(norm, c_out))

    def forward(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu(out)


class ResNet20(nn.Module):
    """CIFAR ResNet-20: 3 stages × 3 basic blocks, channels 16w/32w/64w."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 1, norm: str = "bn"):
        super().__init__()
        w = [16 * width, 32 * width, 64 * width]
        self.conv = nn.Conv2d(input_shape[0], w[0], 3, 1, 1, bias=False)
        self.norm = norm_layer(norm, w[0])
        self.relu = nn.ReLU()
        blocks, c = [], w[0]
        for stage, c_out in enumerate(w):
            for b in range(3):
                blocks.append(BasicBlock(c, c_out, 2 if stage > 0 and b == 0 else 1, norm))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.relu(self.norm(self.conv(x)))
        return self.fc(self.flatten(self.pool(self.blocks(x))))
