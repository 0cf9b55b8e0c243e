"""The compliance API's engine: framework mappings (``frameworks``) and the
reports, scores and violation listings over the audit log (``reports``).
The HTTP routes are ``admin.compliance_routes``; ``server`` runs them as a
process of their own."""
