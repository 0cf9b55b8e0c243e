"""Who may use the admin API: roles, session tokens, and Entra ID sign-in."""
