"""preprocess subpackage of clinfuse."""
