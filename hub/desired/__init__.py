"""Desired state: the catalog, each device's signed document, releases, images and the publisher."""
