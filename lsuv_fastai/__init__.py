__version__ = "0.0.1"

# One import: `from lsuv_fastai import lsuv_init, LSUVCallback`. The core is plain PyTorch; fastai is imported only when
# `LSUVCallback` (or `training_batch`) is asked for, so `lsuv_init` works without it.
from .core import lsuv_init
from .report import LSUVReport, layer_stats
from .targets import LSUV_TYPES, lsuv_layers, lsuv_targets

_FASTAI = ('LSUVCallback', 'training_batch')

def __getattr__(name):
    if name in _FASTAI:
        try: from . import callback
        except ImportError as e:
            raise ImportError(f"lsuv_fastai.{name} needs fastai ({e}): pip install fastai, or from a checkout: pip install -e \".[fastai]\"") from None
        return getattr(callback, name)
    raise AttributeError(f"module 'lsuv_fastai' has no attribute {name!r}")

__all__ = ['lsuv_init', 'LSUVReport', 'layer_stats', 'LSUV_TYPES', 'lsuv_layers', 'lsuv_targets', *_FASTAI]
