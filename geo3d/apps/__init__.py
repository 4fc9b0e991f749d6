"""Application logic behind the front doors (`geo3d generate`, `geo3d detect`): the CLI parses and prints, these do the work."""
