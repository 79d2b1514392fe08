"""A small runtime for PaddleRec-style model folders: config, data, metrics, checkpoints, loops."""
import warnings

# Paddle warns on import that no ccache is found: it only matters to those who compile extensions.
warnings.filterwarnings("ignore", message="No ccache found")
