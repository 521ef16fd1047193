"""baselines subpackage of clinfuse."""
