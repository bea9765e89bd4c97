"""Distillation: one student network learns the tuned ensemble's probability maps, for the line.

    from steel_defect.distill import distill
    summary = distill(cfg, "work/real/postprocessing.yml", "work/real/line", unlabelled="frames/")

The teacher's maps are data (:mod:`.teacher`: computed once, cached as uint8 PNGs keyed on the
teacher's weights and the frame); the student trains in the project's runner on them and on the
labels (:mod:`.student`); :mod:`.run` trains the out-of-fold students and the shipped one, tunes
the thresholds out of fold and writes a tuned pipeline that every command takes. It sits above
``inference`` (it runs the teacher's predictor and the threshold search) and below the commands.
"""

from steel_defect.distill.run import distill

__all__ = ["distill"]
