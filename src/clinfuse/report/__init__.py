"""report subpackage of clinfuse."""
