"""auth.v1.AuthService: users, passwords, tokens, signing keys and service accounts."""
