"""Optimistic locking: the version field (``fields``) and the version-checked UPDATE and
DELETE that every versioned save and delete runs (``writes``)."""
