"""The blob store: one interface, in a local folder or on Azure Blob Storage."""
