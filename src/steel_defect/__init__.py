"""steel-defect: find and classify surface defects in Severstal-format steel-sheet images.

The pipeline reads top to bottom in the package layout:
config -> data -> models -> training -> inference -> CSV / web GUI.
"""

__version__ = "0.1.0"
