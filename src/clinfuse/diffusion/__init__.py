"""diffusion subpackage of clinfuse."""
