"""The web GUI and REST API around the shared :class:`~steel_defect.inference.predictor.Predictor`.

``steel-defect serve`` runs it; :func:`~steel_defect.webapp.app.create_app` builds the
FastAPI app (the page under ``static/`` needs no build step).
"""
