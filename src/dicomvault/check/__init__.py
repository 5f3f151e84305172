"""`dicomvault check`: the offline integrity check of an installation (index and storage area),
naming each problem missing, corrupt or orphan. `command.run_check` is the entry point."""
