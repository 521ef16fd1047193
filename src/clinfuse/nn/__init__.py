"""nn subpackage of clinfuse."""
