"""Guest image pipeline: kernel, initramfs and Debian rootfs, cached by input hash."""
from .builder import ImagePaths, ensure_image, find_image, image_root, manifest

__all__ = ["ImagePaths", "ensure_image", "find_image", "image_root", "manifest"]
