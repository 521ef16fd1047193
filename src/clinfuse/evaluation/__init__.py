"""evaluation subpackage of clinfuse."""
