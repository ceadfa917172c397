"""The image tests' fixtures (podmanlab.py): podman set up here, and the image."""

from podmanlab import image, podman

__all__ = ["image", "podman"]
