"""The policy and compliance engine: guardrails, policies, the learning loop."""
