"""Policy model, loaders and compiled match tables."""
