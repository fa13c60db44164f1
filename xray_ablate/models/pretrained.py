"""ImageNet backbones (torchvision, timm) as convolutional feature extractors for the study's head.

torchvision and timm are imported in the builders: together they add about 2.5 s to the start of
every process (each sweep job, SLURM task and command), and only these backbones need them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from xray_ablate.models.weights import checkpoint_file, load_state_dict

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Inception v3 (ported from TensorFlow) and Xception expect inputs scaled to [-1, 1].
TF_MEAN, TF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass
class Features:
    """A feature extractor, its blocks from input to output (for freezing) and its input stats."""

    module: nn.Module
    blocks: list[nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def vgg(depth: int, pretrained: bool, download: bool = False) -> Features:
    import torchvision.models as tvm

    model = {16: tvm.vgg16, 19: tvm.vgg19}[depth](weights=None)
    if pretrained:
        # Only the conv features are used; the 100M-parameter classifier is never loaded.
        state = load_state_dict(f"vgg{depth}", download)
        model.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                        if k.startswith("features.")})
    # Blocks end at each max-pool, i.e. VGG's five conv stages.
    blocks, stage = [], []
    for layer in model.features:
        stage.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*stage))
            stage = []
    return Features(nn.Sequential(*blocks), blocks, IMAGENET_MEAN, IMAGENET_STD)


def resnet50(pretrained: bool, download: bool = False) -> Features:
    import torchvision.models as tvm

    model = tvm.resnet50(weights=None)
    if pretrained:
        model.load_state_dict(load_state_dict("resnet50", download))
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    blocks = [stem, model.layer1, model.layer2, model.layer3, model.layer4]  # layer4 = conv5
    return Features(nn.Sequential(*blocks), blocks, IMAGENET_MEAN, IMAGENET_STD)


def inception_v3(pretrained: bool, download: bool = False) -> Features:
    import torchvision.models as tvm

    # The checkpoint holds the auxiliary classifier, so build with it, then drop it.
    model = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False)
    if pretrained:
        model.load_state_dict(load_state_dict("inception_v3", download))
    names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
             "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
             "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    blocks = [getattr(model, n) for n in names]
    return Features(nn.Sequential(*blocks), blocks, TF_MEAN, TF_STD)


def xception(pretrained: bool, download: bool = False) -> Features:
    import timm

    # timm loads the verified file itself (weights_only=True) and drops its classifier.
    overlay = {"file": str(checkpoint_file("xception", download))} if pretrained else None
    model = timm.create_model("legacy_xception", pretrained=pretrained, num_classes=0, global_pool="",
                              pretrained_cfg_overlay=overlay)
    blocks = [nn.Sequential(model.conv1, model.bn1, model.act1, model.conv2, model.bn2, model.act2)]
    blocks += [getattr(model, f"block{i}") for i in range(1, 13)]
    blocks += [nn.Sequential(model.conv3, model.bn3, model.act3, model.conv4, model.bn4, model.act4)]
    return Features(nn.Sequential(*blocks), blocks, TF_MEAN, TF_STD)
