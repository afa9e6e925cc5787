"""Model files and the registry that names them."""
