"""Model weight files: read any supported checkpoint into a WanModel, write one in a chosen layout, their metadata,
the atomic write and the output-path checks every writer uses. The layer just above salt_core (which knows no
files): training, the toy wing, the nodes and the CLI load and save models through here."""
