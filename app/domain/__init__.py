"""The pure domain core: statuses, phases, gates and completion decisions.

Nothing in this package imports SQLAlchemy, Celery, Redis or a web framework; the clock and
the stored facts are passed in, so every rule here is testable without I/O.
"""
