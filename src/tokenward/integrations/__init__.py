"""Client integrations: each sets the header, spots expired-token answers with the credential's
`ExpiryRule`, and replays (`_replay.replay_allowed` says how often) through the manager's
single-flight. None refreshes on its own."""
