"""Account genesis: a dealer shares the account secret among the account's holders."""
