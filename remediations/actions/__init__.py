"""Remediation actions: one module per kind of step.

Each implements :class:`~remediations.actions.base.Action`.
"""
