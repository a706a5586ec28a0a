"""Label names and preprocessing of the data sets the zoo knows (one place for each fact)."""
from __future__ import annotations

from typing import Any

# CIFAR's data config, in timm's pretrained_cfg keys: what the CIFAR ResNets, the CIFAR zoo entries and the trainer's
# CIFAR data all use. The normalisation is the GCL/LDAM recipe's (the std differs from the per-pixel std of the train
# set on purpose: it is the figure the published recipes use, and the zoo's weights were trained with it).
CIFAR_DATA_CFG: dict[str, Any] = {
    "input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
    "mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010),
}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm
""".split())


def imagenet_label_names() -> tuple[str, ...] | None:
    """ImageNet-1k class descriptions in label order, from timm's bundled metadata (None if unavailable)."""
    try:
        from timm.data import ImageNetInfo
    except ImportError:  # very old timm
        return None
    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))
