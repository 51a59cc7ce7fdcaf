"""The segmentation network of DST-CBC (spec section 4)."""
from models.deeplab_v2 import BACKBONES, deeplab_v2

__all__ = ['BACKBONES', 'deeplab_v2']
