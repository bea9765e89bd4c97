"""Labelling real frames: the labels database, the active-learning queue, import and export.

    steel-defect label --images DIR --db labels.sqlite [--postprocessing WORK/postprocessing.yml]
    steel-defect labels import|export|stats|queue|history|restore --db labels.sqlite ...

:mod:`.store` owns every query of the database, :mod:`.queue` scores frames from the
ensemble's maps, :mod:`.folder` lists and checks the frames of a folder, and :mod:`.transfer`
moves labels between the database and Severstal-layout folders.
"""
