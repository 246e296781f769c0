"""sca_lib: spatial + channel ("SCA-CNN"-style) attention for CNNs.

The library behind the notebooks in ``notebooks/``. Public names are re-exported here; each
submodule is importable on its own (``sca_lib.attention``, ...).
"""

from .attention import (
    MODES,
    STRENGTH_PRESETS,
    AttnResBlock,
    ChannelAttention,
    DualAttention,
    LiteDualAttention,
    SpatialAttention,
    create_attention,
    init_attention_,
    list_attentions,
    record_attention,
)
from .config import RUN_MODES, default_device, get_mode

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "STRENGTH_PRESETS",
    "AttnResBlock",
    "ChannelAttention",
    "DualAttention",
    "LiteDualAttention",
    "SpatialAttention",
    "create_attention",
    "init_attention_",
    "list_attentions",
    "record_attention",
    "RUN_MODES",
    "default_device",
    "get_mode",
]
