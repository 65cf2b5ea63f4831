"""Guardian recovery: a new device regains the account secret with its guardians' help."""
