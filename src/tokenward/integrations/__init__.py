"""Client integrations: each sets the header, spots expired-token answers with the credential's
`ExpiryRule`, and replays once through the manager's single-flight. None refreshes on its own."""
