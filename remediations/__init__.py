"""Remediation playbooks, actions and the safety engine (see the remediation issue)."""
