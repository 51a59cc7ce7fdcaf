"""Building blocks of DST-CBC: transforms, losses, pseudo-labeling, metrics, checkpoints, loops."""
