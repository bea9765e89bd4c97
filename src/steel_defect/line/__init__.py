"""Line mode: judge the frames a line camera writes into a folder, log every verdict, show it.

- :mod:`steel_defect.line.log`: the inspection log (SQLite by default, PostgreSQL through a URL);
  every query of it lives there.
- :mod:`steel_defect.line.watch`: the loop that finds complete frames, judges each once and
  records it (``steel-defect watch DIR --db inspection.sqlite``).
- :mod:`steel_defect.line.follow`: the labels database's promoted model version, which the loop
  judges with and swaps to between two batches (``watch --labels-db labels.sqlite``).
- :mod:`steel_defect.line.alarms`: per-class rate alarms over a window.

The dashboard page that reads the log is :mod:`steel_defect.webapp.dashboard`.
"""
