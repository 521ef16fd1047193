"""io subpackage of clinfuse."""
