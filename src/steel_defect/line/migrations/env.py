"""Alembic's entry point for the inspection log's migrations.

Run by :meth:`steel_defect.line.log.InspectionLog.open`, which hands over its open connection in
``config.attributes["connection"]``; there is no alembic.ini. To write a migration, add a file to
``versions/`` whose ``down_revision`` is the current head, and describe the change with ``op``.
"""

from alembic import context

connection = context.config.attributes["connection"]
# render_as_batch: SQLite alters a table by copying it, which batch mode does for us.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
