"""File I/O for every command: atomic writes (:mod:`.atomic`), the never-overwrite rule for output files
(:mod:`.outputs`), file-system checks with one-line messages (:mod:`.paths`) and matplotlib for figure files
(:mod:`.figures`). Imports only ``utils.errors``."""
