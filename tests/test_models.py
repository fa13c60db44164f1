"""Backbones: shapes, parameter counts, freezing, and the missing-weights error."""

import pytest
import torch

from xray_ablate.checksums import sha256_file
from xray_ablate.config.schema import BackboneConfig
from xray_ablate.errors import UserError
from xray_ablate.models import build_model, weights

SMALL = {"cnn16": 64, "cnn16_gap": 16, "vgg16": 32, "vgg19": 32, "resnet50": 32,
         "inception_v3": 75, "xception": 71}


def test_cnn16_matches_the_study_architecture():
    model = build_model(BackboneConfig("cnn16"), 4, 200)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.features) == 6
    # 200 px -> 3x3x256 after six poolings -> 2304 -> 512 -> 4
    assert sum(p.numel() for p in model.parameters()) == 2_326_468
    dropout = [m for m in model.head if isinstance(m, torch.nn.Dropout)]
    assert len(dropout) == 1 and dropout[0].p == 0.2
    assert model(torch.rand(2, 1, 200, 200)).shape == (2, 4)


def test_cnn16_refuses_images_too_small_for_six_poolings():
    with pytest.raises(UserError, match="image_size >= 64.*cnn16_gap"):
        build_model(BackboneConfig("cnn16"), 4, 32)


@pytest.mark.parametrize("name", list(SMALL))
def test_every_backbone_builds_and_takes_a_step(name):
    torch.manual_seed(0)
    pretrained = name not in ("cnn16", "cnn16_gap")
    spec = BackboneConfig(name, pretrained=False, freeze="all" if pretrained else "none")
    size = SMALL[name]
    model = build_model(spec, 4, size, normalize=True, train_stats=(0.5, 0.25))
    head_before = [p.detach().clone() for p in model.head.parameters()]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    logits = model(torch.rand(2, 1, size, size))
    assert logits.shape == (2, 4)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(head_before, model.head.parameters(), strict=True))


def test_frozen_parameters_and_batchnorm_statistics_do_not_change():
    spec = BackboneConfig("resnet50", pretrained=False, freeze="last_n", unfreeze_last=1)
    model = build_model(spec, 4, 32)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("features.4", "head"))}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.requires_grad for p in model.features[4].parameters())  # conv5 = layer4 fine-tuned
    conv5_before = model.features[4][0].conv1.weight.detach().clone()
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.rand(4, 1, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert not torch.equal(model.features[4][0].conv1.weight, conv5_before)


def test_missing_pretrained_weights_name_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as err:
        build_model(BackboneConfig("vgg16", pretrained=True, freeze="all"), 4, 32)
    expected = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert str(expected) in str(err.value)
    assert "pretrained=false" in str(err.value)


def test_pretrained_weights_load_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision

    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    # A stand-in for the real file: pin its hash (every checkpoint is verified before loading).
    monkeypatch.setitem(weights.CHECKPOINTS, "resnet50",
                        weights.Checkpoint(weights.CHECKPOINTS["resnet50"].url, sha256_file(path)))
    model = build_model(BackboneConfig("resnet50", pretrained=True, freeze="all"), 4, 32, normalize=True)
    assert torch.equal(model.features[0][0].weight, reference.conv1.weight)
    # normalization on + pretrained: the backbone's ImageNet statistics, not the training split's
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
