"""clinfuse: ROI-guided diffusion fusion of co-registered head MRI and CT (CLIN-FuseDiff++)."""

from clinfuse.errors import ClinfuseInputError

__version__ = "0.1.0"

__all__ = ["ClinfuseInputError", "__version__"]
