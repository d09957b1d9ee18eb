"""Image and text encoders that map into one shared embedding space (OpenCLIP)."""
