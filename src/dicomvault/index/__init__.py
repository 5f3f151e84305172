"""The index: the database that knows every resource, attachment, metadata and change."""
