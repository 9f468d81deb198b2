"""The fleet's security: certificate authority, broker authorization, provisioning, credentials, API tokens."""
