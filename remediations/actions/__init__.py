"""Remediation actions: one module per kind, each implementing :class:`~remediations.actions.base.Action`."""
