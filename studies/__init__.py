"""Studies that measure the models with the tools' own loops."""
