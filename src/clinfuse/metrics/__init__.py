"""metrics subpackage of clinfuse."""
