"""phantom subpackage of clinfuse."""
