"""Calls: the dialog state machine (tracker), end reasons, identities and the call record."""
