"""File I/O for every command: atomic writes (:mod:`.atomic`), the never-overwrite rule for output files
(:mod:`.outputs`) and file-system checks with one-line messages (:mod:`.paths`). Imports only ``utils.errors``."""
