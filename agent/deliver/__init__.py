"""Delivery: the durable spool, the CallN API client, and the audio encoder."""
