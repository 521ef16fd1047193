"""training subpackage of clinfuse."""
