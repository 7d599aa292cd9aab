"""Converters from the released CogView files to our model folders (``cogview convert-original``).

:func:`convert_original` writes a whole model folder; :mod:`.safe_load` opens the original pickles
without running code from them; :mod:`.original` maps their state dicts onto our modules.
"""

from cogview.convert.folder import DEFAULT_DTYPE, DTYPES, convert_original
from cogview.convert.original import transformer_from_original, vqvae_from_original
from cogview.convert.safe_load import resolve_checkpoint, safe_torch_load

__all__ = [
    "DEFAULT_DTYPE",
    "DTYPES",
    "convert_original",
    "resolve_checkpoint",
    "safe_torch_load",
    "transformer_from_original",
    "vqvae_from_original",
]
