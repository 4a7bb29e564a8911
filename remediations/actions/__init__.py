"""Remediation actions: one module per kind, each an :class:`~remediations.actions.base.Action`."""
