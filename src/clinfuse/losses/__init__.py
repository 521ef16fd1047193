"""losses subpackage of clinfuse."""
