"""Shared pieces of the portal: the error hierarchy, model mixins and the audit trail."""
