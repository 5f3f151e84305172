"""Replication: moving archives between Orthanc-compatible servers over their REST APIs (folder
import, server-to-server replication and mirroring). Nothing here touches the index or the storage
of a local server: every server, dicomvault included, is reached through its REST API."""
