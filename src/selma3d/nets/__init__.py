"""MONAI backbones, encoder parts, pretrained-weight loading and finetuning modes."""
