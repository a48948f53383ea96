"""Constants shared by data, models and evaluation."""

# ImageNet statistics: VTP normalises its input with them, and its decoder outputs in that space.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
