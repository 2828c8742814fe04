"""`mixerc.nn`: drop-in layers with upstream's parameters, built on the compiled specs.

    from mixerc.nn import Mamba, Mamba2, Hydra, TiM4Rec, Chimera
    layer = Mamba2(d_model=256, d_state=64, headdim=32, chunk_size=64)
    y = layer(u)                                     # (b, l, 256) -> (b, l, 256)

Each layer owns its parameters under mamba-ssm's / goombalab/hydra's names (a state_dict saved
upstream loads with ``strict=True``) and runs its mixer through ``mx.compile(spec, parameters=False)``.
``Chimera`` has no upstream code: its mixer's parameters live in ``layer.mixer`` under the spec's names.
"""

from .chimera import Chimera
from .common import ConfigError, RMSNormGated, UnsupportedError
from .hydra import Hydra
from .mamba import Mamba
from .mamba2 import Mamba2
from .tim4rec import TiM4Rec

__all__ = ["Mamba", "Mamba2", "Hydra", "TiM4Rec", "Chimera", "RMSNormGated", "ConfigError", "UnsupportedError"]
