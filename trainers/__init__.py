"""JAX trainers: masked DP-SGD, the reference trainer, shortcut trainers, models, data."""
