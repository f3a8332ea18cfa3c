"""Helpers every part uses that are not the store contract: imports nothing else of the package.

- :mod:`.machine`: usable cores, worker start method, one thread per task, dying with a parent.
- :mod:`.progress`: the progress events a library function reports (the CLI draws them).
- :mod:`.yaml_files`: YAML read safely (scalars only, bounded aliases).
"""
